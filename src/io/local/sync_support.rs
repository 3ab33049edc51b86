//! What the sync engine needs of the local data file: its database, the writer thread, and
//! record writes inside the sync engine's own transactions (local-first writes, acks,
//! pulled changes).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde_json::{Map, Value as Json};

use super::{LocalExecutor, decode, encode, encode_into, storage, table_name};
use crate::core::WriteAction;
use crate::io::executor::BoxFuture;
use crate::io::outbox;
use crate::protocol::{
    StandardError, Stored, WireWriteEntry, WriteItemResult, WriteRequest, WriteResult, apply_entry, apply_entry_taking,
    entry_target, with_version,
};

impl LocalExecutor {
    /// The open database.
    pub(crate) fn database(&self) -> &redb::Database {
        &self.db.db
    }

    /// Runs `f` on the writer thread now (in order with the executor's own writes); the
    /// future answers when it ran.
    pub(crate) fn on_writer<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<Result<R, StandardError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self.writer.submit(Box::new(move || {
            let _ = reply.send(f());
        }));
        Box::pin(async move {
            if !queued {
                return Err(StandardError::internal("the local writer thread has stopped"));
            }
            answer.await.map_err(|_| StandardError::internal("the local writer failed before answering"))
        })
    }

    /// Sets a stored record's version (its value stays); returns the value.
    pub(crate) fn set_version_in(
        &self,
        txn: &WriteTransaction,
        resource: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Map<String, Json>>, StandardError> {
        let name = table_name(resource);
        let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(storage)?;
        let cur = match table.get(id).map_err(storage)? {
            Some(v) => Some(decode(id, v.value())?),
            None => None,
        };
        let Some(cur) = cur else { return Ok(None) };
        table.insert(id, encode(version, &cur.value)?.as_slice()).map_err(storage)?;
        Ok(Some(cur.value))
    }

    /// Stores a record at a version (or deletes it with `None`).
    pub(crate) fn put_in(
        &self,
        txn: &WriteTransaction,
        resource: &str,
        id: &str,
        value: Option<(&Map<String, Json>, u64)>,
    ) -> Result<(), StandardError> {
        let name = table_name(resource);
        let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(storage)?;
        match value {
            Some((v, version)) => {
                table.insert(id, encode(version, v)?.as_slice()).map_err(storage)?;
            }
            None => {
                table.remove(id).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Local-first writes: applied to the local file at once, with no version check and no
    /// version bump (a record keeps the last version a server gave it; the server decides
    /// when the outbox pushes the write). `applied` is called for each entry that applied,
    /// with the JSON of the record as stored (`None` after a delete), before the next one.
    ///
    /// The value of an entry the outbox queues with the stored record in its place (a create
    /// or a full-value write: [`outbox::pushes_record`]) moves into the record and is gone
    /// from `req` after; other entries keep theirs.
    pub(crate) fn write_local_first_in(
        &self,
        txn: &WriteTransaction,
        req: &mut WriteRequest,
        mut applied: impl FnMut(&WireWriteEntry, Option<&[u8]>) -> Result<(), StandardError>,
    ) -> Result<WriteResult, StandardError> {
        let name = table_name(&req.resource);
        let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(storage)?;
        let mut results = Vec::with_capacity(req.entries.len());
        let mut row = Vec::new();
        for e in &mut req.entries {
            let Some(id) = entry_target(e) else {
                results.push(WriteItemResult::err(
                    e.entry_id.clone(),
                    StandardError::invalid_write("a local-first write needs its record's id"),
                    None,
                ));
                continue;
            };
            let cur: Option<Stored> = match table.get(id.as_str()).map_err(storage)? {
                Some(v) => Some(decode(&id, v.value())?),
                None => None,
            };
            let kept = cur.as_ref().map_or(0, |c| c.version);
            // Based on what is here: the local apply never conflicts with itself.
            let base = if cur.is_some() && e.action != WriteAction::Create { Some(kept) } else { e.item.base_version };
            let outcome = if outbox::pushes_record(e) {
                apply_entry_taking(e, base, cur.as_ref(), || id.clone())
            } else if base == e.item.base_version {
                apply_entry(e, cur.as_ref(), || id.clone())
            } else {
                let mut rebased = e.clone();
                apply_entry_taking(&mut rebased, base, cur.as_ref(), || id.clone())
            };
            let r = match outcome {
                Ok(a) => {
                    let value = match a.next {
                        Some(n) => {
                            encode_into(&mut row, kept, &n.value)?;
                            table.insert(a.id.as_str(), row.as_slice()).map_err(storage)?;
                            Some(n.value)
                        }
                        None => {
                            table.remove(a.id.as_str()).map_err(storage)?;
                            None
                        }
                    };
                    applied(e, value.as_ref().and_then(|_| row.get(8..)))?;
                    let version = value.as_ref().map(|_| kept);
                    WriteItemResult::ok(e.entry_id.clone(), a.id, version, value.map(|v| with_version(v, kept)))
                }
                Err((error, current)) => WriteItemResult::err(e.entry_id.clone(), error, current),
            };
            results.push(r);
        }
        Ok(WriteResult { transaction_applied: Some(true), results })
    }
}
