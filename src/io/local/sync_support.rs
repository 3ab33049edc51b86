//! What the sync engine needs of the local data file: its database, the writer thread, and
//! record writes inside the sync engine's own transactions (local-first writes, acks,
//! pulled changes).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde_json::{Map, Value as Json};

use super::{LocalExecutor, decode, encode, storage, table_name};
use crate::io::executor::BoxFuture;
use crate::protocol::{
    StandardError, Stored, WriteItemResult, WriteRequest, WriteResult, apply_entry, entry_target, with_version,
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
    /// when the outbox pushes the write).
    pub(crate) fn write_local_first_in(
        &self,
        txn: &WriteTransaction,
        req: &WriteRequest,
    ) -> Result<WriteResult, StandardError> {
        let name = table_name(&req.resource);
        let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(storage)?;
        let mut results = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
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
            let mut local = e.clone();
            if cur.is_some() && e.action != crate::core::WriteAction::Create {
                local.item.base_version = Some(kept);
            }
            let r = match apply_entry(&local, cur.as_ref(), || id.clone()) {
                Ok(applied) => {
                    match &applied.next {
                        Some(n) => {
                            table.insert(applied.id.as_str(), encode(kept, &n.value)?.as_slice()).map_err(storage)?;
                        }
                        None => {
                            table.remove(applied.id.as_str()).map_err(storage)?;
                        }
                    }
                    let data = applied.next.as_ref().map(|n| with_version(n.value.clone(), kept));
                    WriteItemResult::ok(e.entry_id.clone(), applied.id, applied.next.map(|_| kept), data)
                }
                Err((error, current)) => WriteItemResult::err(e.entry_id.clone(), error, current),
            };
            results.push(r);
        }
        Ok(WriteResult { transaction_applied: Some(true), results })
    }
}
