//! `StandardError`: every failure on the wire.

use serde::{Deserialize, Serialize};

/// The family of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is wrong.
    Validation,
    /// Who you are, or what you may do.
    Auth,
    /// Too much.
    Limits,
    /// A version mismatch or a duplicate.
    Conflict,
    /// Nothing there.
    NotFound,
    /// The storage or transport failed.
    Adapter,
    /// A bug or an unknown failure.
    Internal,
}

/// An error as the protocol carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{code}: {message}")]
pub struct StandardError {
    /// A stable code such as `CONFLICT`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The family.
    pub kind: ErrorKind,
    /// Whether trying again may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// The underlying error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<StandardError>>,
}

impl StandardError {
    /// An error with a code, kind and message.
    pub fn new(code: &str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), kind, retryable: None, details: None, cause: None }
    }
    /// Marks it retryable.
    pub fn retryable(mut self) -> Self {
        self.retryable = Some(true);
        self
    }
    /// Adds details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable == Some(true)
    }
    /// `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new("CONFLICT", ErrorKind::Conflict, message)
    }
    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("NOT_FOUND", ErrorKind::NotFound, message)
    }
    /// `INVALID_WRITE`.
    pub fn invalid_write(message: impl Into<String>) -> Self {
        Self::new("INVALID_WRITE", ErrorKind::Validation, message)
    }
    /// `INVALID_QUERY`.
    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new("INVALID_QUERY", ErrorKind::Validation, message)
    }
    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("INTERNAL", ErrorKind::Internal, message)
    }
    /// An adapter (storage / transport) failure.
    pub fn adapter(code: &str, message: impl Into<String>) -> Self {
        Self::new(code, ErrorKind::Adapter, message)
    }
}
