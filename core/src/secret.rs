//! The shared secret's strength: a generator for strong secrets (`iris-rpc secret`) and a
//! conservative estimate that flags weak ones at start.
//!
//! Why it matters: the client proves the secret first, and clients accept any server
//! certificate by default (as legacy does), so one connection to a fake server yields a proof
//! (v2 `Pc`, or the legacy `auth` HMAC) against which guesses can be tested offline at the speed
//! of SHA-256. A secret from a 300,000-word list falls in seconds. 128 bits of entropy put that
//! out of reach, which is what [`MIN_BITS`] asks for.

use rand::RngCore;

use crate::protocol::hex;

/// Strength below which a secret is called weak: 128 bits, the strength of the keys derived
/// from it.
pub const MIN_BITS: f64 = 128.0;

/// Bits credited to one word-like run of letters (all lowercase, all capitals, or capitalized):
/// a word from a list of about 300,000 (log2 300,000 is 18.2). Dictionary attacks guess words,
/// not letters.
const WORD_BITS: f64 = 18.2;

/// A fresh 256-bit secret from the operating system's generator, as 64 lowercase hex
/// characters.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let s = hex::encode(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    s
}

/// A conservative estimate of a secret's entropy in bits, from how it is written: it errs
/// towards calling a secret weak.
///
/// - A secret made only of hex digits counts 4 bits per digit.
/// - Otherwise each character counts by its class (a digit log2 10, a letter log2 26, or log2
///   52 in a run that mixes cases, anything else log2 33), except that a character equal to the
///   one before it counts nothing, and a word-like run of letters (all lowercase, all capitals,
///   or one capital then lowercase) counts at most [`WORD_BITS`], as one word of a list.
///
/// It cannot tell a random string of lowercase letters from a word (such a string is counted
/// as one word: use digits, mixed case or hex), and it does not know every pattern an attacker
/// tries, so a secret that passes is not proven strong; [`generate`] makes one that is.
pub fn estimate_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 2 && chars.iter().all(char::is_ascii_hexdigit) {
        return chars
            .iter()
            .enumerate()
            .filter(|&(i, c)| i == 0 || chars[i - 1] != *c)
            .count() as f64
            * 4.0;
    }
    let mut bits = 0.0;
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            bits += letter_run_bits(&chars[start..i]);
        } else {
            if i == 0 || chars[i - 1] != chars[i] {
                bits += if chars[i].is_ascii_digit() {
                    10f64.log2()
                } else {
                    33f64.log2()
                };
            }
            i += 1;
        }
    }
    bits
}

fn letter_run_bits(run: &[char]) -> f64 {
    let lower = run.iter().all(|c| c.is_lowercase());
    let upper = run.iter().all(|c| c.is_uppercase());
    let capitalized = run[0].is_uppercase() && run[1..].iter().all(|c| c.is_lowercase());
    let per = if lower || upper {
        26f64.log2()
    } else {
        52f64.log2()
    };
    let distinct = run
        .iter()
        .enumerate()
        .filter(|&(i, c)| i == 0 || run[i - 1] != *c)
        .count() as f64;
    let bits = distinct * per;
    if lower || upper || capitalized {
        bits.min(WORD_BITS + if capitalized { 1.0 } else { 0.0 })
    } else {
        bits
    }
}

/// Whether the secret estimates below [`MIN_BITS`], with the estimate.
pub fn is_weak(secret: &str) -> Option<f64> {
    let bits = estimate_bits(secret);
    (bits < MIN_BITS).then_some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_secrets_are_flagged() {
        for weak in [
            "secret",
            "s3cret",
            "interop-secret",
            "sunshine",
            "Tr0ub4dor&3",
            "correct horse battery staple",
            "Password1Password1Password1",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "00000000000000000000000000000000000000000000000000000000000000000",
            // 31 hex digits: 124 bits.
            "0123456789abcdef0123456789abcde",
        ] {
            let bits = estimate_bits(weak);
            assert!(bits < MIN_BITS, "{weak:?}: {bits}");
            assert!(is_weak(weak).is_some());
        }
    }

    #[test]
    fn generated_and_random_looking_secrets_pass() {
        for _ in 0..100 {
            let s = generate();
            assert_eq!(s.len(), 64);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            // 64 hex digits are 256 bits; repeats of a neighbour count nothing, so a little less.
            assert!(estimate_bits(&s) >= 160.0, "{s}");
        }
        assert_ne!(generate(), generate());
        for strong in [
            // openssl rand -base64 32
            "q8Vn0sX+3kQe9ZLr7u2bWc1yTfJ4hG6dPaMxNoEiKvU=",
            // a v4 uuid: 122 random bits, counted a little over
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            // 32 hex digits: 128 bits
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                is_weak(strong).is_none(),
                "{strong:?}: {}",
                estimate_bits(strong)
            );
        }
    }
}
