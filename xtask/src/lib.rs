//! The parts of xtask that other crates use too. The test crate has `xtask` as a
//! dev-dependency for these; keep this library's dependencies light.

use std::path::{Path, PathBuf};

pub mod certs;

/// The Python virtual environment `cargo xtask setup` creates for the test scripts
/// (`tests/py/`), relative to the workspace root.
pub const VENV_DIR: &str = "target/pyenv";

/// The interpreter of the virtual environment under the workspace `root`. `cargo xtask test`
/// passes it to the tests as `NHI_PYTHON`.
pub fn venv_python(root: &Path) -> PathBuf {
    root.join(VENV_DIR).join("bin/python")
}
