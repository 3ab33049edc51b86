//! The `local` executor: records in one redb file, the embedded default.
//!
//! One table per store (`records/<store>`: id → version ‖ JSON) and one table of idempotency
//! keys. All of a frame's writes — every store's — commit in one durable redb transaction.
//! Versions and compare-and-set follow the protocol, so a local store behaves like a server;
//! like the server, it keeps idempotency keys for a window (7 days), then forgets them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::executor::{BoxFuture, Executor, LoadedRecord};
use crate::core::{JsonRecord, Keyed, Table};
use crate::protocol::{
    QueryRequest, QueryResult, StandardError, Stored, WriteItemResult, WriteRequest, WriteResult, apply_entry,
    entry_target, valid_resource, with_version,
};

const REPLAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("atoma/idempotency");
/// When each idempotency key was stored: `ms (big-endian) ‖ key` → (), so the expired ones are a
/// prefix of the table.
const REPLAY_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("atoma/idempotency-times");

/// How long idempotency keys are kept (PROTOCOL.md: 7 days).
const REPLAY_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Why a data file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or another open handle in this one) has the file open.
    #[error("data file {path} is in use by another process or handle (close it, or give this one its own data folder)")]
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

/// The `local` executor. Clones share the open database and its writer thread.
///
/// Writes run on a thread of their own, in the order they were handed over, and start the
/// moment [`Executor::write_many`] is called — not when its future is first polled — so a
/// frame's writes land even if the async runtime shuts down right after the flush (as it does
/// on `AppExit`). Dropping the last clone waits for the writes already handed over, then
/// closes the file.
#[derive(Clone)]
pub struct LocalExecutor {
    db: Db,
    writer: Arc<WriterThread>,
}

/// The open file: what the writer thread and the blocking read tasks need.
#[derive(Clone)]
struct Db {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    replay_window: Duration,
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread that runs write transactions, one after the other.
struct WriterThread {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    fn start() -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let thread = std::thread::Builder::new().name("atoma-local-writer".into()).spawn(move || {
            for job in rx {
                // A panicking job drops its reply sender: its caller gets an error, and the
                // thread carries on with the next one.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        Ok(Self { jobs: Some(tx), thread: Some(thread) })
    }

    fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the queued writes are done.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

fn table_name(resource: &str) -> String {
    format!("records/{resource}")
}

fn encode(version: u64, value: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>, StandardError> {
    let mut out = Vec::new();
    encode_into(&mut out, version, value)?;
    Ok(out)
}

/// Encodes a record row (`version ‖ JSON`) into `buf`, reusing its allocation; the JSON is
/// `buf[8..]`.
fn encode_into(
    buf: &mut Vec<u8>,
    version: u64,
    value: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), StandardError> {
    buf.clear();
    buf.extend_from_slice(&version.to_le_bytes());
    serde_json::to_writer(&mut *buf, value).map_err(|e| StandardError::internal(format!("encoding a record: {e}")))
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn replay_time_key(buf: &mut Vec<u8>, ms: u64, key: &str) {
    buf.clear();
    buf.extend_from_slice(&ms.to_be_bytes());
    buf.extend_from_slice(key.as_bytes());
}

/// The first byte of a replay row in the compact layout: `1 ‖ flags ‖ version:u64 ‖
/// entity id (u32 length ‖ bytes) ‖ data JSON (the rest)`. Older files hold the JSON of the
/// `WriteItemResult` (first byte `{`), still read.
const REPLAY_FORMAT_1: u8 = 1;
const REPLAY_VERSION: u8 = 1;
const REPLAY_DATA: u8 = 2;
const REPLAY_ENTITY: u8 = 4;

/// Encodes the result of an applied write for replays (its entry id is the caller's).
fn encode_replay(buf: &mut Vec<u8>, r: &WriteItemResult) -> Result<(), StandardError> {
    buf.clear();
    buf.push(REPLAY_FORMAT_1);
    let flags = if r.version.is_some() { REPLAY_VERSION } else { 0 }
        | if r.data.is_some() { REPLAY_DATA } else { 0 }
        | if r.entity_id.is_some() { REPLAY_ENTITY } else { 0 };
    buf.push(flags);
    buf.extend_from_slice(&r.version.unwrap_or(0).to_le_bytes());
    let id = r.entity_id.as_deref().unwrap_or("");
    let n = u32::try_from(id.len()).map_err(|_| StandardError::invalid_write("a record id longer than 4 GiB"))?;
    buf.extend_from_slice(&n.to_le_bytes());
    buf.extend_from_slice(id.as_bytes());
    if let Some(d) = &r.data {
        serde_json::to_writer(&mut *buf, d).map_err(|e| StandardError::internal(format!("encoding a replay: {e}")))?;
    }
    Ok(())
}

/// Decodes a replay row (either layout); `None` if it is unreadable (the write then runs as
/// a new one, as before).
fn decode_replay(bytes: &[u8], entry_id: &str) -> Option<WriteItemResult> {
    match bytes.split_first()? {
        (&REPLAY_FORMAT_1, rest) => {
            let (&flags, rest) = rest.split_first()?;
            let (version, rest) = rest.split_first_chunk::<8>()?;
            let (n, rest) = rest.split_first_chunk::<4>()?;
            let (id, rest) = rest.split_at_checked(usize::try_from(u32::from_le_bytes(*n)).ok()?)?;
            let data = if flags & REPLAY_DATA != 0 { Some(serde_json::from_slice(rest).ok()?) } else { None };
            let entity_id = std::str::from_utf8(id).ok()?.to_owned();
            let version = (flags & REPLAY_VERSION != 0).then(|| u64::from_le_bytes(*version));
            let mut r = WriteItemResult::ok(entry_id.to_owned(), entity_id, version, data);
            if flags & REPLAY_ENTITY == 0 {
                r.entity_id = None;
            }
            Some(r)
        }
        _ => {
            let mut r = serde_json::from_slice::<WriteItemResult>(bytes).ok()?;
            r.entry_id = entry_id.to_owned();
            Some(r)
        }
    }
}

/// Forgets up to `limit` idempotency keys stored at or before `cutoff_ms` (oldest first).
fn expire_replays(
    replays: &mut redb::Table<&str, &[u8]>,
    times: &mut redb::Table<&[u8], ()>,
    cutoff_ms: u64,
    limit: usize,
) -> Result<(), StandardError> {
    let end = (cutoff_ms.saturating_add(1)).to_be_bytes();
    let expired: Vec<Vec<u8>> = times
        .range::<&[u8]>(..&end[..])
        .map_err(storage)?
        .take(limit)
        .map(|item| item.map(|(k, _)| k.value().to_vec()).map_err(storage))
        .collect::<Result<_, _>>()?;
    for k in expired {
        times.remove(k.as_slice()).map_err(storage)?;
        if let Some(Ok(key)) = k.get(8..).map(std::str::from_utf8) {
            replays.remove(key).map_err(storage)?;
        }
    }
    Ok(())
}

impl LocalExecutor {
    /// Opens (or creates) the data file, creating its folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Io { path: path.clone(), source })?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            // `LockProtocolMismatch`: another process has it open with another redb version.
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
                OpenError::Locked { path: path.clone() }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                OpenError::Locked { path: path.clone() }
            }
            // redb reports a file that is not a redb database at all ("magic number mismatch")
            // as an IO error of kind `InvalidData`: that is a damaged file, not an IO failure.
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                OpenError::Corrupt { path: path.clone(), reason: source.to_string() }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
                OpenError::Io { path: path.clone(), source }
            }
            other => OpenError::Corrupt { path: path.clone(), reason: other.to_string() },
        })?;
        let writer = WriterThread::start().map_err(|source| OpenError::Io { path: path.clone(), source })?;
        Ok(Self {
            db: Db { db: Arc::new(db), path: Arc::new(path), replay_window: REPLAY_WINDOW },
            writer: Arc::new(writer),
        })
    }

    /// How long a repeated idempotency key replays its first result (default 7 days, as on
    /// the server). Older keys are forgotten, a few with each write, so the file does not
    /// grow with every write ever made.
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.db.replay_window = window;
        self
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// Every record of a resource, read now (blocking).
    pub fn load_now(&self, resource: &str) -> Result<Vec<LoadedRecord>, StandardError> {
        self.db.load_now(resource)
    }

    /// Applies requests in one transaction (blocking, on the caller's thread): all of them
    /// commit durably, or none.
    pub fn write_now(&self, reqs: &[WriteRequest]) -> Result<Vec<WriteResult>, StandardError> {
        self.db.write_now(reqs)
    }
}

impl Db {
    fn load_now(&self, resource: &str) -> Result<Vec<LoadedRecord>, StandardError> {
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

    fn write_now(&self, reqs: &[WriteRequest]) -> Result<Vec<WriteResult>, StandardError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut out = Vec::with_capacity(reqs.len());
        {
            let mut replays = txn.open_table(REPLAYS).map_err(storage)?;
            let mut times = txn.open_table(REPLAY_TIMES).map_err(storage)?;
            let now = now_ms();
            let window = u64::try_from(self.replay_window.as_millis()).unwrap_or(u64::MAX);
            // Forget more keys than this transaction can add, so expiry keeps up.
            let entries: usize = reqs.iter().map(|r| r.entries.len()).sum();
            expire_replays(&mut replays, &mut times, now.saturating_sub(window), 64 + 2 * entries)?;
            // Reused for every entry: no allocation per write for its keys and rows.
            let (mut key, mut row, mut replay, mut time_key) = (String::new(), Vec::new(), Vec::new(), Vec::new());
            for req in reqs {
                if !valid_resource(&req.resource) {
                    return Err(StandardError::invalid_write(format!("bad resource name {:?}", req.resource)));
                }
                let name = table_name(&req.resource);
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
                let mut table = txn.open_table(def).map_err(storage)?;
                let mut results = Vec::with_capacity(req.entries.len());
                for e in &req.entries {
                    key.clear();
                    key.push_str(&req.resource);
                    key.push('\u{0}');
                    key.push_str(&e.item.meta.idempotency_key);
                    if let Some(prev) = replays.get(key.as_str()).map_err(storage)?
                        && let Some(r) = decode_replay(prev.value(), &e.entry_id)
                    {
                        results.push(r);
                        continue;
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
                            let (version, data) = match applied.next {
                                Some(n) => {
                                    encode_into(&mut row, n.version, &n.value)?;
                                    table.insert(applied.id.as_str(), row.as_slice()).map_err(storage)?;
                                    (Some(n.version), returning.then(|| with_version(n.value, n.version)))
                                }
                                None => {
                                    table.remove(applied.id.as_str()).map_err(storage)?;
                                    (None, None)
                                }
                            };
                            WriteItemResult::ok(e.entry_id.clone(), applied.id, version, data)
                        }
                        Err((error, current)) => WriteItemResult::err(e.entry_id.clone(), error, current),
                    };
                    if r.ok {
                        encode_replay(&mut replay, &r)?;
                        replays.insert(key.as_str(), replay.as_slice()).map_err(storage)?;
                        replay_time_key(&mut time_key, now, &key);
                        times.insert(time_key.as_slice(), ()).map_err(storage)?;
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
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.query_now(&req))
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
        let n = reqs.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let db = self.db.clone();
        // Handed to the writer thread now: the transaction runs whether or not the returned
        // future is ever polled.
        let queued = self.writer.submit(Box::new(move || {
            let _ = reply.send(db.write_now(&reqs));
        }));
        Box::pin(async move {
            let r = if queued {
                answer
                    .await
                    .unwrap_or_else(|_| Err(StandardError::internal("the local writer failed before answering")))
            } else {
                Err(StandardError::internal("the local writer thread has stopped"))
            };
            match r {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e); n],
            }
        })
    }

    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        let db = self.db.clone();
        let resource = resource.to_owned();
        Some(Box::pin(async move {
            tokio::task::spawn_blocking(move || db.load_now(&resource))
                .await
                .unwrap_or_else(|e| Err(StandardError::internal(format!("local load task: {e}"))))
        }))
    }
}

mod sync_support;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_round_trip_and_older_json_rows_still_read() {
        let mut buf = Vec::new();
        for r in [
            WriteItemResult::ok("e1".into(), "p1".into(), Some(3), Some(serde_json::json!({"id": "p1", "version": 3}))),
            WriteItemResult::ok("e1".into(), "p1".into(), None, None),
        ] {
            encode_replay(&mut buf, &r).expect("encodes");
            assert_eq!(decode_replay(&buf, "e1"), Some(r.clone()));
            let json = serde_json::to_vec(&WriteItemResult { entry_id: "old".into(), ..r.clone() }).expect("json");
            assert_eq!(decode_replay(&json, "e1"), Some(r), "a row written before the compact layout");
        }
        assert_eq!(decode_replay(&[REPLAY_FORMAT_1, 0, 1], "e1"), None, "truncated: not a replay");
        assert_eq!(decode_replay(b"", "e1"), None);
    }
}
