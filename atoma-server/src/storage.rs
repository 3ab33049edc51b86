//! Where records, the change log and idempotency results live: behind [`Storage`], with
//! [`RedbStorage`] (one redb file, the default) and [`MemoryStorage`] (nothing survives).
//!
//! The server keeps every record in memory too (indexed tables for queries); storage is read
//! once at start ([`Storage::load`]) and then written once per request ([`Storage::commit`]),
//! atomically and durably. The change log and idempotency results are read from storage.

mod memory;
mod redb_store;

pub use self::memory::MemoryStorage;
pub use self::redb_store::RedbStorage;

use atoma::protocol::{ChangeKind, Stored, WriteItemResult};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::StorageError;

/// The name of the data file inside the data folder.
pub const DATA_FILE: &str = "atoma-server.redb";

/// A record as stored: its resource, id, fields (with `id`, without `version`) and version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    /// The resource.
    pub resource: String,
    /// The record's id.
    pub id: String,
    /// Fields and version.
    pub stored: Stored,
}

/// Everything storage holds that the server keeps in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// Every record of every resource.
    pub records: Vec<StoredRecord>,
    /// The newest change-log sequence number (0: the log is empty).
    pub head: u64,
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// The sequence number (≥ 1, strictly increasing, never reused). Not stored in the value.
    #[serde(skip)]
    pub seq: u64,
    /// The resource.
    pub resource: String,
    /// The record.
    pub entity_id: String,
    /// Upsert or delete.
    pub kind: ChangeKind,
    /// The record's version after the change (a delete: the deleted version + 1).
    pub version: u64,
    /// When (server clock, ms since the Unix epoch).
    pub changed_at_ms: i64,
    /// The record with `id` and `version`, for upserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// The record's owner, when its resource has an owner field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A stored idempotency result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// The first result of the key.
    pub result: WriteItemResult,
    /// When it was first applied (ms since the Unix epoch).
    pub at_ms: i64,
}

/// What one request writes: all of it commits, or none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitBatch {
    /// Record states after the request, in order (`None`: deleted).
    pub records: Vec<(String, String, Option<Stored>)>,
    /// New change-log entries, with increasing `seq` following the head.
    pub changes: Vec<LogEntry>,
    /// New idempotency results by key.
    pub replays: Vec<(String, Replay)>,
    /// Idempotency results first applied before this time may be dropped (opportunistic).
    pub prune_replays_before_ms: Option<i64>,
}

/// A page of the change log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangePage {
    /// The entries the filter kept, oldest first.
    pub entries: Vec<LogEntry>,
    /// The sequence number of the last entry examined (kept or not), or the cursor given when
    /// none was: the next pull continues after it.
    pub last_seen: u64,
}

/// A storage backend. Calls block; the server makes them from blocking threads and never
/// runs two `commit`s at once.
pub trait Storage: Send + Sync + 'static {
    /// Everything to rebuild the in-memory state at start.
    fn load(&self) -> Result<Loaded, StorageError>;
    /// The stored result of an idempotency key.
    fn replay(&self, key: &str) -> Result<Option<Replay>, StorageError>;
    /// Writes a batch atomically and durably.
    fn commit(&self, batch: &CommitBatch) -> Result<(), StorageError>;
    /// Change-log entries after `after`, oldest first: examines entries until `limit` of them
    /// pass `keep` or the log ends.
    fn changes_after(
        &self,
        after: u64,
        limit: usize,
        keep: &mut dyn FnMut(&LogEntry) -> bool,
    ) -> Result<ChangePage, StorageError>;
}
