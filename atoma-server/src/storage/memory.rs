//! In-memory storage: for tests and embedding. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{ChangePage, CommitBatch, Loaded, LogEntry, Replay, Storage, StoredRecord};
use crate::error::StorageError;
use atoma::protocol::Stored;

#[derive(Default)]
struct Inner {
    records: BTreeMap<(String, String), Stored>,
    changes: BTreeMap<u64, LogEntry>,
    replays: HashMap<String, Replay>,
}

/// Storage in memory.
#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn load(&self) -> Result<Loaded, StorageError> {
        let inner = self.lock();
        Ok(Loaded {
            records: inner
                .records
                .iter()
                .map(|((resource, id), stored)| StoredRecord {
                    resource: resource.clone(),
                    id: id.clone(),
                    stored: stored.clone(),
                })
                .collect(),
            head: inner.changes.keys().next_back().copied().unwrap_or(0),
        })
    }

    fn replay(&self, key: &str) -> Result<Option<Replay>, StorageError> {
        Ok(self.lock().replays.get(key).cloned())
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for (resource, id, state) in &batch.records {
            let key = (resource.clone(), id.clone());
            match state {
                Some(s) => inner.records.insert(key, s.clone()),
                None => inner.records.remove(&key),
            };
        }
        for c in &batch.changes {
            inner.changes.insert(c.seq, c.clone());
        }
        for (key, r) in &batch.replays {
            inner.replays.insert(key.clone(), r.clone());
        }
        if let Some(before) = batch.prune_replays_before_ms {
            inner.replays.retain(|_, r| r.at_ms >= before);
        }
        Ok(())
    }

    fn changes_after(
        &self,
        after: u64,
        limit: usize,
        keep: &mut dyn FnMut(&LogEntry) -> bool,
    ) -> Result<ChangePage, StorageError> {
        let inner = self.lock();
        let mut page = ChangePage { entries: Vec::new(), last_seen: after };
        if limit == 0 {
            return Ok(page);
        }
        for (seq, entry) in inner.changes.range((Bound::Excluded(after), Bound::Unbounded)) {
            page.last_seen = *seq;
            if keep(entry) {
                page.entries.push(entry.clone());
                if page.entries.len() >= limit {
                    break;
                }
            }
        }
        Ok(page)
    }
}
