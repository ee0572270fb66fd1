//! The README's Rust quick start is `examples/quickstart.rs`, verbatim, and it runs.

mod quickstart {
    include!("../examples/quickstart.rs");

    pub fn run() -> iris_rpc::Result<()> {
        main()
    }
}

#[test]
fn readme_quick_start_is_the_example() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.rs"
    ))
    .expect("example");
    let start = readme
        .find("<!-- rust-quickstart:begin -->")
        .expect("quick start markers");
    let block = &readme[start..];
    let code_start = block.find("```rust\n").expect("rust block") + "```rust\n".len();
    let code_end = block[code_start..].find("```").expect("end of block") + code_start;
    assert_eq!(
        block[code_start..code_end].trim(),
        example.trim(),
        "README quick start differs from core/examples/quickstart.rs"
    );
}

#[test]
fn readme_quick_start_runs() {
    quickstart::run().expect("quick start");
}

#[test]
fn readme_python_quick_start_is_the_tested_one() {
    let block = |text: &str| {
        let a = text
            .find("<!-- quickstart:begin -->")
            .expect("python quick start markers");
        let b = text.find("<!-- quickstart:end -->").expect("end marker");
        text[a..b].to_owned()
    };
    let top =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let py = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bindings-python/README.md"
    ))
    .unwrap();
    assert_eq!(block(&top), block(&py), "README's Python quick start differs from bindings-python/README.md, which the Python tests run");
}
