//! The wire types of the atoma protocol (see `docs/protocol.md`), with serde of the exact JSON,
//! and the per-entry write semantics every executor that acts as a server shares
//! (versions, compare-and-set, patch ops).

mod apply;
mod envelope;
mod error;
mod write;

pub use apply::{Applied, Stored, apply_entry, apply_entry_taking, entry_target};
pub use envelope::{
    Change, ChangeKind, Meta, Notify, OpBody, OpResult, OpsData, OpsRequest, OpsResponse, PROTOCOL_VERSION,
    PullRequest, PullResult, RawOpsResponse, RemoteOp, Warning,
};
pub use error::{ErrorKind, StandardError};
pub use write::{Current, ItemMeta, UpsertOptions, WireWriteEntry, WriteItem, WriteItemResult, WriteOptions};

use serde::{Deserialize, Serialize};

use crate::core::{PageInfo, Query};

/// A query op's payload: `{ "resource": "players", "query": {...} }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The store.
    pub resource: String,
    /// The query.
    pub query: Query,
}

/// A query op's result data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// Records with `id` and `version`.
    pub data: Vec<serde_json::Value>,
    /// Paging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_info: Option<PageInfo>,
}

/// A write op's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// The store.
    pub resource: String,
    /// The entries, applied in order.
    pub entries: Vec<WireWriteEntry>,
}

/// A write op's result data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// Whether all entries were applied in one transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_applied: Option<bool>,
    /// One per entry, in order.
    pub results: Vec<WriteItemResult>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether a resource name is valid: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_resource(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Adds `"version"` to a record's JSON for the wire.
pub fn with_version(mut record: serde_json::Map<String, serde_json::Value>, version: u64) -> serde_json::Value {
    record.insert("version".into(), version.into());
    serde_json::Value::Object(record)
}
