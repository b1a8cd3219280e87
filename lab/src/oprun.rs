//! The product binary the lab drives: `--oprun PATH`, else `oprun` beside `oprun-lab`.

use std::path::{Path, PathBuf};

use crate::LabError;

/// The path of the `oprun` binary under test.
#[derive(Debug, Clone)]
pub struct OprunBinary(PathBuf);

impl OprunBinary {
    /// `explicit`, else the `oprun` in the directory of the running `oprun-lab`; it must exist.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, LabError> {
        let path = match explicit {
            Some(p) => p,
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("oprun"))
                .ok_or_else(|| LabError::Invalid("cannot locate oprun-lab's directory".into()))?,
        };
        if !path.is_file() {
            return Err(LabError::Invalid(format!(
                "no oprun binary at {} (build it with `cargo build --release --bin oprun`, or pass --oprun PATH)",
                path.display()
            )));
        }
        Ok(Self(path))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}
