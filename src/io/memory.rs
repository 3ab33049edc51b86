//! The `memory` executor: an in-process server over indexed JSON tables. Versions,
//! compare-and-set and idempotent replays as the protocol says; nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::executor::{BoxFuture, Executor, LoadedRecord};
use crate::core::{Entry, JsonRecord, Table};
use crate::protocol::{
    QueryRequest, QueryResult, StandardError, Stored, WriteItemResult, WriteRequest, WriteResult, apply_entry,
    with_version,
};

/// Idempotency keys remembered (the memory executor forgets the oldest beyond this).
const MAX_REPLAYS: usize = 100_000;

#[derive(Default)]
struct State {
    tables: HashMap<String, Table<JsonRecord>>,
    replays: HashMap<String, WriteItemResult>,
    /// Replay keys in arrival order: the oldest are forgotten beyond `MAX_REPLAYS`.
    replay_order: std::collections::VecDeque<String>,
    next_id: u64,
}

/// The `memory` executor. Clones share one state.
#[derive(Clone, Default)]
pub struct MemoryExecutor {
    state: Arc<Mutex<State>>,
}

impl MemoryExecutor {
    /// An empty one.
    pub fn new() -> Self {
        Self::default()
    }

    fn run_query(&self, req: &QueryRequest) -> Result<QueryResult, StandardError> {
        let q = req.query.compile().map_err(|e| StandardError::invalid_query(e.to_string()))?;
        let state = self.state.lock().map_err(|_| StandardError::internal("memory executor state poisoned"))?;
        let Some(table) = state.tables.get(&req.resource) else { return Ok(QueryResult::default()) };
        let page = table.query(&q).map_err(|e| StandardError::invalid_query(e.to_string()))?;
        Ok(QueryResult {
            data: page.items.iter().map(|e| with_version(e.record.body().clone(), e.version)).collect(),
            page_info: Some(page.page_info),
        })
    }

    fn run_write(&self, req: WriteRequest) -> Result<WriteResult, StandardError> {
        let mut guard = self.state.lock().map_err(|_| StandardError::internal("memory executor state poisoned"))?;
        let state = &mut *guard;
        let table = state.tables.entry(req.resource.clone()).or_default();
        let mut results = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let key = format!("{}\u{0}{}", req.resource, e.item.meta.idempotency_key);
            if let Some(r) = state.replays.get(&key) {
                let mut r = r.clone();
                r.entry_id = e.entry_id.clone();
                results.push(r);
                continue;
            }
            let id = crate::protocol::entry_target(e);
            let cur = id
                .as_ref()
                .and_then(|id| table.entry(id))
                .map(|c| Stored { value: c.record.body().clone(), version: c.version });
            let next_id = &mut state.next_id;
            let r = match apply_entry(e, cur.as_ref(), || {
                *next_id += 1;
                format!("m{next_id}")
            }) {
                Ok(applied) => {
                    let version = applied.next.as_ref().map(|n| n.version);
                    let returning = e.options.as_ref().and_then(|o| o.returning) == Some(true);
                    let data =
                        applied.next.as_ref().filter(|_| returning).map(|n| with_version(n.value.clone(), n.version));
                    let next = match applied.next {
                        Some(n) => match JsonRecord::new(n.value) {
                            Ok(r) => Some(Entry::new(r, n.version)),
                            Err(err) => {
                                results.push(WriteItemResult::err(
                                    e.entry_id.clone(),
                                    StandardError::invalid_write(err.to_string()),
                                    None,
                                ));
                                continue;
                            }
                        },
                        None => None,
                    };
                    table.apply([(applied.id.clone(), next)]);
                    WriteItemResult::ok(e.entry_id.clone(), applied.id, version, data)
                }
                Err((error, current)) => WriteItemResult::err(e.entry_id.clone(), error, current),
            };
            if r.ok {
                state.replay_order.push_back(key.clone());
                state.replays.insert(key, r.clone());
                while state.replay_order.len() > MAX_REPLAYS {
                    if let Some(old) = state.replay_order.pop_front() {
                        state.replays.remove(&old);
                    }
                }
            }
            results.push(r);
        }
        Ok(WriteResult { transaction_applied: None, results })
    }
}

impl Executor for MemoryExecutor {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        let this = self.clone();
        Box::pin(async move { this.run_query(&req) })
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        // The work runs in the future, on the io runtime — not in the frame that hands it over.
        let this = self.clone();
        Box::pin(async move { this.run_write(req) })
    }

    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        let r = match self.state.lock() {
            Ok(s) => Ok(s
                .tables
                .get(resource)
                .map(|t| t.iter().map(|e| (e.record.body().clone(), e.version)).collect())
                .unwrap_or_default()),
            Err(_) => Err(StandardError::internal("memory executor state poisoned")),
        };
        Some(Box::pin(async move { r }))
    }
}
