"""The PEP 517 build backend of iris-rpc's sdist: maturin, except without Rust.

maturin, when it finds no ``cargo``, downloads and installs a Rust toolchain (about 900 MB) into
a temporary directory and builds with it, which a user installing a Python package does not
expect. Here a source build without ``cargo`` on ``PATH`` stops at once with a message saying
what to do instead: install the prebuilt wheel, or install Rust. Everything else is maturin's.
"""

import os
import shutil

import maturin as _maturin

MESSAGE = (
    "iris-rpc: building from source needs a Rust toolchain (cargo >= 1.85), and none was "
    "found on PATH. Either install the prebuilt wheel (pip install --only-binary iris-rpc "
    "iris-rpc, or the .whl file from dist/python), which needs no Rust, or install Rust "
    "(https://rustup.rs) and retry."
)


class RustNotFound(RuntimeError):
    """A source build was asked for on a machine without cargo."""


def _require_cargo():
    # Never let maturin fetch a toolchain of its own, even when cargo is found later.
    os.environ["MATURIN_NO_INSTALL_RUST"] = "1"
    if shutil.which("cargo") is None:
        raise RustNotFound(MESSAGE)


def get_requires_for_build_wheel(config_settings=None):
    _require_cargo()
    return _maturin.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _require_cargo()
    hook = getattr(_maturin, "get_requires_for_build_editable", _maturin.get_requires_for_build_wheel)
    return hook(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    # Making an sdist only copies sources, but maturin reads them with `cargo metadata`.
    _require_cargo()
    return _maturin.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _require_cargo()
    return _maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _require_cargo()
    hook = getattr(
        _maturin, "prepare_metadata_for_build_editable", _maturin.prepare_metadata_for_build_wheel
    )
    return hook(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _require_cargo()
    return _maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _require_cargo()
    return _maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _require_cargo()
    return _maturin.build_sdist(sdist_directory, config_settings)
