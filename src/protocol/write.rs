//! Write entries and their results, as on the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::StandardError;
use crate::core::{PatchOp, UpsertMode, WriteAction};

/// One write entry: `{ "entryId", "action", "item", "options"? }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireWriteEntry {
    /// Unique in the request; results name it.
    pub entry_id: String,
    /// `create`, `update`, `upsert`, `delete`, `patch`.
    pub action: WriteAction,
    /// What to write.
    pub item: WriteItem,
    /// Merge, returning, upsert mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<WriteOptions>,
}

/// The item of a write entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteItem {
    /// The record's id (a create may leave it to the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The version the write is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// The record (create, update, upsert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// Patch ops (patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<PatchOp>>,
    /// Idempotency key and client time.
    pub meta: ItemMeta,
}

/// Required on every item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemMeta {
    /// A repeated key replays the first result.
    pub idempotency_key: String,
    /// When the client made the write.
    pub client_time_ms: i64,
}

/// Options of a write entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WriteOptions {
    /// `update`: merge the given top-level fields instead of replacing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<bool>,
    /// Return the stored record in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returning: Option<bool>,
    /// `upsert`: the mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertOptions>,
}

/// `{ "mode": "strict" | "loose" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertOptions {
    /// Strict (default) or loose.
    #[serde(default)]
    pub mode: UpsertMode,
}

/// The server's current copy, sent with a `CONFLICT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Current {
    /// The record (with `id` and `version`), if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The result of one entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteItemResult {
    /// The entry.
    pub entry_id: String,
    /// Whether it was applied.
    pub ok: bool,
    /// The record's id (on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The new version (on success; absent after a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The stored record (with `returning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StandardError>,
    /// The current copy, on `CONFLICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Current>,
}

impl WriteItemResult {
    /// A success.
    pub fn ok(entry_id: String, entity_id: String, version: Option<u64>, data: Option<Json>) -> Self {
        Self { entry_id, ok: true, entity_id: Some(entity_id), version, data, error: None, current: None }
    }
    /// A failure.
    pub fn err(entry_id: String, error: StandardError, current: Option<Current>) -> Self {
        Self { entry_id, ok: false, entity_id: None, version: None, data: None, error: Some(error), current }
    }
}
