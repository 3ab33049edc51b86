//! The server's own errors (start-up, config, storage) and the protocol errors it sends.

use std::net::SocketAddr;
use std::path::PathBuf;

use atoma::protocol::{ErrorKind, StandardError};
use axum::http::StatusCode;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("config{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if it came from one.
        path: Option<PathBuf>,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// Why the storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another process has the data file open.
    #[error("data file {path} is in use by another process")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The data file is not an atoma-server file, or is damaged.
    #[error("data file {path} is damaged or not an atoma-server data file: {reason} (it was left untouched)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The folder or file could not be created or read.
    #[error("data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The backend failed.
    #[error("storage: {0}")]
    Backend(String),
}

impl StorageError {
    /// The protocol error a failed storage call becomes (retryable).
    pub fn to_standard(&self) -> StandardError {
        StandardError::adapter("STORAGE", self.to_string()).retryable()
    }
}

/// Why the server could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage could not be opened or loaded.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// Serving failed, or a start-up task died.
    #[error("server: {0}")]
    Serve(String),
}

pub(crate) fn err(code: &str, kind: ErrorKind, message: impl Into<String>) -> StandardError {
    StandardError::new(code, kind, message)
}

pub(crate) fn invalid_request(message: impl Into<String>) -> StandardError {
    err("INVALID_REQUEST", ErrorKind::Validation, message)
}

pub(crate) fn access_denied(message: impl Into<String>) -> StandardError {
    err("ACCESS_DENIED", ErrorKind::Auth, message)
}

/// The HTTP status of a request-level error, by the table of the protocol.
pub(crate) fn status_of(code: &str) -> StatusCode {
    match code {
        "BAD_REQUEST" | "INVALID_BODY" => StatusCode::BAD_REQUEST,
        "UNAUTHORIZED" => StatusCode::UNAUTHORIZED,
        "ACCESS_DENIED" | "RESOURCE_NOT_ALLOWED" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "METHOD_NOT_ALLOWED" => StatusCode::METHOD_NOT_ALLOWED,
        "CONFLICT" => StatusCode::CONFLICT,
        "PAYLOAD_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
        "INVALID_REQUEST" | "INVALID_QUERY" | "INVALID_WRITE" | "TOO_MANY_OPS" | "TOO_MANY_ITEMS"
        | "UNSUPPORTED_ACTION" => StatusCode::UNPROCESSABLE_ENTITY,
        "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
        "ADAPTER_NOT_IMPLEMENTED" => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
