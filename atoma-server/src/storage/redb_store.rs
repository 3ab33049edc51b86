//! The default storage: one redb file with four tables.
//!
//! - `atoma-server/records`: (resource, id) → version (8 bytes LE) ‖ JSON object
//! - `atoma-server/changes`: seq → JSON [`LogEntry`]
//! - `atoma-server/idempotency`: key → JSON [`Replay`]
//! - `atoma-server/idempotency-age`: (first applied ms, key) → () (for pruning)
//!
//! plus `atoma-server/meta` with the schema version. Each commit is one durable redb
//! transaction.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use atoma::protocol::Stored;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{ChangePage, CommitBatch, Loaded, LogEntry, Replay, Storage, StoredRecord};
use crate::error::StorageError;

const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("atoma-server/records");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("atoma-server/changes");
const REPLAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("atoma-server/idempotency");
const REPLAY_AGE: TableDefinition<(u64, &str), ()> = TableDefinition::new("atoma-server/idempotency-age");
const META: TableDefinition<&str, u64> = TableDefinition::new("atoma-server/meta");

const SCHEMA: u64 = 1;
/// Expired idempotency keys dropped per commit at most (pruning is opportunistic).
const PRUNE_PER_COMMIT: usize = 256;

/// Storage in one redb file.
pub struct RedbStorage {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage").field("path", &self.path).finish()
    }
}

fn encode_record(s: &Stored) -> Result<Vec<u8>, StorageError> {
    let mut out = s.version.to_le_bytes().to_vec();
    serde_json::to_writer(&mut out, &s.value).map_err(|e| StorageError::Backend(format!("encoding a record: {e}")))?;
    Ok(out)
}

fn decode_record(bytes: &[u8]) -> Result<Stored, String> {
    let (v, json) = bytes.split_at_checked(8).ok_or("shorter than its version")?;
    let mut version = [0u8; 8];
    version.copy_from_slice(v);
    match serde_json::from_slice(json) {
        Ok(serde_json::Value::Object(value)) => Ok(Stored { value, version: u64::from_le_bytes(version) }),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| StorageError::Backend(format!("encoding: {e}")))
}

impl RedbStorage {
    /// Opens (or creates) the data file, creating its folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Io { path: path.clone(), source })?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked { path: path.clone() },
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                StorageError::Locked { path: path.clone() }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
                StorageError::Io { path: path.clone(), source }
            }
            other => StorageError::Corrupt { path: path.clone(), reason: other.to_string() },
        })?;
        let this = Self { db, path };
        this.init()?;
        Ok(this)
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn backend(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError::Backend(format!("{}: {e}", self.path.display()))
    }

    fn corrupt(&self, reason: String) -> StorageError {
        StorageError::Corrupt { path: self.path.clone(), reason }
    }

    /// Creates the tables and checks the schema version.
    fn init(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.corrupt(e.to_string()))?;
            let schema = meta.get("schema").map_err(|e| self.backend(e))?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA).map_err(|e| self.backend(e))?;
                }
                Some(SCHEMA) => {}
                Some(other) => {
                    return Err(self.corrupt(format!("schema version {other}, this build reads {SCHEMA}")));
                }
            }
            txn.open_table(RECORDS).map_err(|e| self.corrupt(e.to_string()))?;
            txn.open_table(CHANGES).map_err(|e| self.corrupt(e.to_string()))?;
            txn.open_table(REPLAYS).map_err(|e| self.corrupt(e.to_string()))?;
            txn.open_table(REPLAY_AGE).map_err(|e| self.corrupt(e.to_string()))?;
        }
        txn.commit().map_err(|e| self.backend(e))
    }
}

impl Storage for RedbStorage {
    fn load(&self) -> Result<Loaded, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let records = txn.open_table(RECORDS).map_err(|e| self.backend(e))?;
        let mut out = Loaded::default();
        for item in records.iter().map_err(|e| self.backend(e))? {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            let (resource, id) = k.value();
            let stored =
                decode_record(v.value()).map_err(|why| self.corrupt(format!("record {resource}/{id}: {why}")))?;
            out.records.push(StoredRecord { resource: resource.to_owned(), id: id.to_owned(), stored });
        }
        let changes = txn.open_table(CHANGES).map_err(|e| self.backend(e))?;
        out.head = changes.last().map_err(|e| self.backend(e))?.map_or(0, |(k, _)| k.value());
        Ok(out)
    }

    fn replay(&self, key: &str) -> Result<Option<Replay>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(REPLAYS).map_err(|e| self.backend(e))?;
        let Some(v) = table.get(key).map_err(|e| self.backend(e))? else { return Ok(None) };
        // A result this build cannot read is treated as absent rather than failing every write.
        Ok(serde_json::from_slice(v.value()).ok())
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| self.backend(e))?;
            for (resource, id, state) in &batch.records {
                match state {
                    Some(s) => records.insert((resource.as_str(), id.as_str()), encode_record(s)?.as_slice()),
                    None => records.remove((resource.as_str(), id.as_str())),
                }
                .map_err(|e| self.backend(e))?;
            }
            let mut changes = txn.open_table(CHANGES).map_err(|e| self.backend(e))?;
            for c in &batch.changes {
                changes.insert(c.seq, to_json(c)?.as_slice()).map_err(|e| self.backend(e))?;
            }
            let mut replays = txn.open_table(REPLAYS).map_err(|e| self.backend(e))?;
            let mut ages = txn.open_table(REPLAY_AGE).map_err(|e| self.backend(e))?;
            for (key, r) in &batch.replays {
                replays.insert(key.as_str(), to_json(r)?.as_slice()).map_err(|e| self.backend(e))?;
                let at = u64::try_from(r.at_ms).unwrap_or(0);
                ages.insert((at, key.as_str()), ()).map_err(|e| self.backend(e))?;
            }
            if let Some(before) = batch.prune_replays_before_ms {
                let before = u64::try_from(before).unwrap_or(0);
                let mut expired = Vec::new();
                for item in ages
                    .extract_from_if::<(u64, &str), _>(..(before, ""), |_, _| true)
                    .map_err(|e| self.backend(e))?
                    .take(PRUNE_PER_COMMIT)
                {
                    let (k, _) = item.map_err(|e| self.backend(e))?;
                    expired.push(k.value().1.to_owned());
                }
                for key in expired {
                    // The key may have been applied again after it expired: keep the newer result.
                    let newer = match replays.get(key.as_str()).map_err(|e| self.backend(e))? {
                        Some(v) => serde_json::from_slice::<Replay>(v.value())
                            .is_ok_and(|r| u64::try_from(r.at_ms).unwrap_or(0) >= before),
                        None => true,
                    };
                    if !newer {
                        replays.remove(key.as_str()).map_err(|e| self.backend(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.backend(e))
    }

    fn changes_after(
        &self,
        after: u64,
        limit: usize,
        keep: &mut dyn FnMut(&LogEntry) -> bool,
    ) -> Result<ChangePage, StorageError> {
        let mut page = ChangePage { entries: Vec::new(), last_seen: after };
        if limit == 0 {
            return Ok(page);
        }
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(CHANGES).map_err(|e| self.backend(e))?;
        for item in table.range::<u64>((Bound::Excluded(after), Bound::Unbounded)).map_err(|e| self.backend(e))? {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            let seq = k.value();
            let mut entry: LogEntry =
                serde_json::from_slice(v.value()).map_err(|e| self.corrupt(format!("change {seq}: {e}")))?;
            entry.seq = seq;
            page.last_seen = seq;
            if keep(&entry) {
                page.entries.push(entry);
                if page.entries.len() >= limit {
                    break;
                }
            }
        }
        Ok(page)
    }
}
