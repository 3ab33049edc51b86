//! `AtomaMetrics`: what the reduce systems did, per store — the proof of the one-commit
//! invariants.

use std::collections::HashMap;

use bevy_ecs::resource::Resource;

/// Counters of one store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Commits (frames in which the store changed).
    pub commits: u64,
    /// Index updates (one per commit that changed records).
    pub index_updates: u64,
    /// Fetches made because a write's record was missing.
    pub cache_miss_fetches: u64,
    /// Intents received.
    pub intents: u64,
    /// Operations in each segment of the last commit.
    pub last_segments: Vec<usize>,
    /// Records in the store.
    pub records: usize,
    /// Writes sent and not yet answered.
    pub in_flight: usize,
}

/// Per-store counters, updated by the reduce systems.
#[derive(Resource, Clone, Debug, Default)]
pub struct AtomaMetrics {
    stores: HashMap<&'static str, StoreMetrics>,
}

impl AtomaMetrics {
    /// The counters of a store.
    pub fn store(&self, name: &str) -> StoreMetrics {
        self.stores.get(name).cloned().unwrap_or_default()
    }
    pub(crate) fn entry(&mut self, name: &'static str) -> &mut StoreMetrics {
        self.stores.entry(name).or_default()
    }
}
