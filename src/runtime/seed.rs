//! Static game data: seeding a store from a JSON file (an item catalog, a quest table).

use std::path::{Path, PathBuf};

use super::config::Transforms;
use crate::core::Record;

/// Why a seed file could not be used. Names the file, and the line and field where it can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The file could not be read.
    #[error("seed file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid JSON, or a record does not fit the store's type.
    #[error("seed file {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// The column (1-based).
        column: usize,
        /// What serde said (it names the field).
        message: String,
    },
    /// A record failed the store's inbound transform or validation.
    #[error("seed file {path}, record {index} (id {id}): {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The record's position in the array (0-based).
        index: usize,
        /// Its id.
        id: String,
        /// Why.
        message: String,
    },
}

/// Reads and checks a seed file: a JSON array of records of `T`.
pub fn load_seed<T: Record>(path: &Path, transforms: &Transforms<T>) -> Result<Vec<T>, SeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Io { path: path.to_owned(), source })?;
    let records: Vec<T> = serde_json::from_str(&text).map_err(|e| SeedError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(records.len());
    for (index, r) in records.into_iter().enumerate() {
        let id = r.id().to_string();
        let invalid = |message: String| SeedError::Invalid { path: path.to_owned(), index, id: id.clone(), message };
        let r = match &transforms.inbound {
            Some(t) => t(r).map_err(invalid)?,
            None => r,
        };
        for v in &transforms.validate {
            v(&r).map_err(invalid)?;
        }
        out.push(r);
    }
    Ok(out)
}
