//! The `local` executor: records in one redb file, the embedded default.
//!
//! One table per store (`records/<store>`: id → version ‖ JSON) and one table of idempotency
//! keys. All of a frame's writes — every store's — commit in one durable redb transaction.
//! Versions and compare-and-set follow the protocol, so a local store behaves like a server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::executor::{BoxFuture, Executor, LoadedRecord};
use crate::core::{JsonRecord, Keyed, Table};
use crate::protocol::{
    QueryRequest, QueryResult, StandardError, Stored, WriteItemResult, WriteRequest, WriteResult, apply_entry,
    entry_target, valid_resource, with_version,
};

const REPLAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("atoma/idempotency");

/// Why a data file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process has the file open.
    #[error("data file {path} is in use by another process (close it, or give this one its own data folder)")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a redb database, or is damaged.
    #[error(
        "data file {path} is damaged or not an atoma data file: {reason} (it was left untouched; move it aside to start fresh)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb said.
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
}

/// The `local` executor. Clones share the open database.
#[derive(Clone)]
pub struct LocalExecutor {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

fn table_name(resource: &str) -> String {
    format!("records/{resource}")
}

fn encode(version: u64, value: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>, StandardError> {
    let mut out = version.to_le_bytes().to_vec();
    serde_json::to_writer(&mut out, value).map_err(|e| StandardError::internal(format!("encoding a record: {e}")))?;
    Ok(out)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Stored, StandardError> {
    let corrupt = |why: String| StandardError::adapter("CORRUPT_RECORD", format!("record {key}: {why}"));
    let (v, json) = bytes.split_at_checked(8).ok_or_else(|| corrupt("shorter than its version".into()))?;
    let version = u64::from_le_bytes(v.try_into().map_err(|_| corrupt("bad version".into()))?);
    match serde_json::from_slice(json) {
        Ok(serde_json::Value::Object(value)) => Ok(Stored { value, version }),
        Ok(_) => Err(corrupt("not a JSON object".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

fn storage(e: impl std::fmt::Display) -> StandardError {
    StandardError::adapter("STORAGE", format!("local data file: {e}")).retryable()
}

impl LocalExecutor {
    /// Opens (or creates) the data file, creating its folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Io { path: path.clone(), source })?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked { path: path.clone() },
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                OpenError::Locked { path: path.clone() }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
                OpenError::Io { path: path.clone(), source }
            }
            other => OpenError::Corrupt { path: path.clone(), reason: other.to_string() },
        })?;
        Ok(Self { db: Arc::new(db), path: Arc::new(path) })
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record of a resource, read now (blocking).
    pub fn load_now(&self, resource: &str) -> Result<Vec<LoadedRecord>, StandardError> {
        let name = table_name(resource);
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
        let txn = self.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let stored = decode(k.value(), v.value())?;
            out.push((stored.value, stored.version));
        }
        Ok(out)
    }

    fn query_now(&self, req: &QueryRequest) -> Result<QueryResult, StandardError> {
        let q = req.query.compile().map_err(|e| StandardError::invalid_query(e.to_string()))?;
        let mut table: Table<JsonRecord> = Table::new([]);
        let records = self.load_now(&req.resource)?;
        table.apply(records.into_iter().filter_map(|(m, v)| {
            let r = JsonRecord::new(m).ok()?;
            Some((r.id().clone(), Some(crate::core::Entry::new(r, v))))
        }));
        let page = table.query(&q).map_err(|e| StandardError::invalid_query(e.to_string()))?;
        Ok(QueryResult {
            data: page.items.iter().map(|e| with_version(e.record.body().clone(), e.version)).collect(),
            page_info: Some(page.page_info),
        })
    }

    /// Applies requests in one transaction (blocking): all of them commit durably, or none.
    pub fn write_now(&self, reqs: &[WriteRequest]) -> Result<Vec<WriteResult>, StandardError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut out = Vec::with_capacity(reqs.len());
        {
            let mut replays = txn.open_table(REPLAYS).map_err(storage)?;
            for req in reqs {
                if !valid_resource(&req.resource) {
                    return Err(StandardError::invalid_write(format!("bad resource name {:?}", req.resource)));
                }
                let name = table_name(&req.resource);
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(storage)?;
                let mut results = Vec::with_capacity(req.entries.len());
                for e in &req.entries {
                    let key = format!("{}\u{0}{}", req.resource, e.item.meta.idempotency_key);
                    if let Some(prev) = replays.get(key.as_str()).map_err(storage)? {
                        if let Ok(mut r) = serde_json::from_slice::<WriteItemResult>(prev.value()) {
                            r.entry_id = e.entry_id.clone();
                            results.push(r);
                            continue;
                        }
                    }
                    let target = entry_target(e);
                    let cur = match &target {
                        Some(id) => match table.get(id.as_str()).map_err(storage)? {
                            Some(v) => Some(decode(id, v.value())?),
                            None => None,
                        },
                        None => None,
                    };
                    let r = match apply_entry(e, cur.as_ref(), || format!("l{}", e.item.meta.idempotency_key)) {
                        Ok(applied) => {
                            let returning = e.options.as_ref().and_then(|o| o.returning) == Some(true);
                            match &applied.next {
                                Some(n) => {
                                    table
                                        .insert(applied.id.as_str(), encode(n.version, &n.value)?.as_slice())
                                        .map_err(storage)?;
                                }
                                None => {
                                    table.remove(applied.id.as_str()).map_err(storage)?;
                                }
                            }
                            let data = applied
                                .next
                                .as_ref()
                                .filter(|_| returning)
                                .map(|n| with_version(n.value.clone(), n.version));
                            WriteItemResult::ok(e.entry_id.clone(), applied.id, applied.next.map(|n| n.version), data)
                        }
                        Err((error, current)) => WriteItemResult::err(e.entry_id.clone(), error, current),
                    };
                    if r.ok {
                        let bytes = serde_json::to_vec(&r).map_err(|e| StandardError::internal(e.to_string()))?;
                        replays.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
                    }
                    results.push(r);
                }
                out.push(WriteResult { transaction_applied: Some(true), results });
            }
        }
        txn.commit().map_err(storage)?;
        Ok(out)
    }
}

impl Executor for LocalExecutor {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.query_now(&req))
                .await
                .unwrap_or_else(|e| Err(StandardError::internal(format!("local query task: {e}"))))
        })
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        let fut = self.write_many(vec![req]);
        Box::pin(async move {
            fut.await.pop().unwrap_or_else(|| Err(StandardError::internal("local write returned no result")))
        })
    }

    fn write_many(&self, reqs: Vec<WriteRequest>) -> BoxFuture<Vec<Result<WriteResult, StandardError>>> {
        let this = self.clone();
        Box::pin(async move {
            let n = reqs.len();
            let r = tokio::task::spawn_blocking(move || this.write_now(&reqs))
                .await
                .unwrap_or_else(|e| Err(StandardError::internal(format!("local write task: {e}"))));
            match r {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e); n],
            }
        })
    }

    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        let this = self.clone();
        let resource = resource.to_owned();
        Some(Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_now(&resource))
                .await
                .unwrap_or_else(|e| Err(StandardError::internal(format!("local load task: {e}"))))
        }))
    }
}
