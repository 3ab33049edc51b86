//! The write reducer: a frame's operations on one store → one plan (the next state of each
//! changed record, per-item all-settled results, inverse patches, write entries to persist).
//!
//! Pure: it reads the table and never mutates it. The caller applies [`Plan::changes`] with
//! [`Table::apply`] once — one commit, one index update — however many operations the frame
//! held.

use std::collections::hash_map;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::core::fields::Keyed;
use crate::core::helpers::{fork, parallelism};
use crate::core::patch::{PatchOp, apply_patch};
use crate::core::table::{Change, Entry, IdMap, Table, prefetch, prefetch_record};

/// Where a write came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// A game system.
    #[default]
    User,
    /// The sync engine (pulled changes, writebacks): never recorded in history.
    Sync,
    /// An undo or redo.
    History,
    /// A change to a mirrored entity's component.
    Mirror,
}

/// What every write carries besides its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpMeta {
    /// Makes retries safe: the server applies a key once.
    pub idempotency_key: String,
    /// When the client made the write (ms since the Unix epoch).
    pub client_time_ms: i64,
    /// Where it came from.
    pub origin: Origin,
    /// Groups writes for undo / redo.
    pub action_id: Option<String>,
    /// The route it goes through (`None`: the store's).
    pub route: Option<String>,
}

/// How an update changes a record.
pub enum UpdateWith<R> {
    /// Replace the record.
    Replace(R),
    /// Merge these top-level fields into the record's JSON form.
    Merge(Map<String, Json>),
    /// Change the record in place.
    Closure(Box<dyn FnOnce(&mut R) + Send + Sync>),
}

impl<R: std::fmt::Debug> std::fmt::Debug for UpdateWith<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateWith::Replace(r) => f.debug_tuple("Replace").field(r).finish(),
            UpdateWith::Merge(m) => f.debug_tuple("Merge").field(m).finish(),
            UpdateWith::Closure(_) => f.write_str("Closure(..)"),
        }
    }
}

/// `strict`: an existing record needs the matching base version; `loose`: last write wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpsertMode {
    /// Check the base version of an existing record.
    #[default]
    Strict,
    /// Last write wins.
    Loose,
}

/// One operation on a store.
#[derive(Debug)]
pub enum Op<R: Keyed> {
    /// Records fetched on a cache miss: set only where absent; never persisted.
    Hydrate(Vec<Entry<R>>),
    /// A new record; an existing id is [`WriteError::Duplicate`].
    Create(R),
    /// Change an existing record.
    Update {
        /// Which.
        id: R::Id,
        /// The version the change was based on (checked when given).
        base_version: Option<u64>,
        /// How.
        with: UpdateWith<R>,
    },
    /// Create or change.
    Upsert {
        /// The record.
        record: R,
        /// Merge the record's serialized top-level fields into an existing record instead of
        /// replacing it (fields a typed record skips when serializing are kept).
        merge: bool,
        /// Strict or loose.
        mode: UpsertMode,
        /// The version the write was based on.
        base_version: Option<u64>,
    },
    /// Remove a record.
    Delete {
        /// Which.
        id: R::Id,
        /// The version the delete was based on (checked when given).
        base_version: Option<u64>,
    },
    /// Patch ops; commutative ops need no base version.
    Patch {
        /// Which.
        id: R::Id,
        /// The version the patch was based on (checked when given).
        base_version: Option<u64>,
        /// The ops.
        ops: Vec<PatchOp>,
    },
    /// A server confirmed a write: set the version (and the server's data, if given).
    Writeback {
        /// Which.
        id: R::Id,
        /// The server version.
        version: u64,
        /// The server's copy.
        record: Option<R>,
    },
    /// A change from elsewhere (pulled, or a server's current value after a conflict):
    /// applied unless the local copy is newer. `None` deletes.
    Remote {
        /// Which.
        id: R::Id,
        /// The server version.
        version: u64,
        /// The record, or `None` for a delete.
        record: Option<R>,
    },
    /// Set a record back to an exact earlier state (a rollback).
    Restore {
        /// Which.
        id: R::Id,
        /// The state.
        entry: Option<Entry<R>>,
    },
}

impl<R: Keyed> Op<R> {
    /// The record the op is about (`None` for a hydrate, which may hold several).
    pub fn target(&self) -> Option<&R::Id> {
        match self {
            Op::Hydrate(_) => None,
            Op::Create(r) | Op::Upsert { record: r, .. } => Some(r.id()),
            Op::Update { id, .. }
            | Op::Delete { id, .. }
            | Op::Patch { id, .. }
            | Op::Writeback { id, .. }
            | Op::Remote { id, .. }
            | Op::Restore { id, .. } => Some(id),
        }
    }
}

/// A write's kind, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WriteAction {
    /// `create`.
    Create,
    /// `update`.
    Update,
    /// `upsert`.
    Upsert,
    /// `delete`.
    Delete,
    /// `patch` (ext).
    Patch,
}

/// A write to persist through a route's executor.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteEntry<R: Keyed> {
    /// The index of the operation that made it.
    pub op: usize,
    /// The kind.
    pub action: WriteAction,
    /// The record's id.
    pub id: R::Id,
    /// The version the write is based on (the record's version before it, if confirmed).
    pub base_version: Option<u64>,
    /// The record after the write (create, update, upsert, patch), shared with the table.
    pub value: Option<Arc<R>>,
    /// For `update` with merge: the merged fields.
    pub merge: Option<Map<String, Json>>,
    /// For `patch`: the ops.
    pub patch: Vec<PatchOp>,
    /// For `upsert`.
    pub upsert_mode: Option<UpsertMode>,
    /// Idempotency key, client time, origin, action, route.
    pub meta: OpMeta,
}

/// Why one operation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError<R: Keyed> {
    /// No record with the id.
    #[error("no record with id {0}")]
    NotFound(R::Id),
    /// `create` of an id that exists.
    #[error("a record with id {0} already exists")]
    Duplicate(R::Id),
    /// The base version does not match: `current` is the record as it is.
    #[error("version conflict on {id}: based on {base:?}, current is {}", current.as_ref().map_or(0, |c| c.version))]
    Conflict {
        /// Which.
        id: R::Id,
        /// The version the write was based on.
        base: Option<u64>,
        /// The record as it is now.
        current: Option<Box<Entry<R>>>,
    },
    /// The write is not valid (a bad patch, a failed validation, a changed id).
    #[error("invalid write: {0}")]
    Invalid(String),
}

/// How one operation settled.
pub type Settled<R> = Result<Applied<<R as Keyed>::Id>, WriteError<R>>;

/// A successful operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<Id> {
    /// The record's id (`None` for a hydrate of several).
    pub id: Option<Id>,
    /// The record's version after the operation (`None` when deleted).
    pub version: Option<u64>,
}

/// The state of one record before one operation: apply these in reverse to undo.
#[derive(Clone, Debug, PartialEq)]
pub struct Inverse<R: Keyed> {
    /// The operation.
    pub op: usize,
    /// The record.
    pub id: R::Id,
    /// Its state before the operation.
    pub prev: Option<Entry<R>>,
}

/// A run of consecutive operations with the same origin, action and route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The origin.
    pub origin: Origin,
    /// The action id.
    pub action_id: Option<String>,
    /// The route.
    pub route: Option<String>,
    /// Which operations.
    pub ops: Range<usize>,
}

/// What a batch of operations does to a store.
#[derive(Debug)]
pub struct Plan<R: Keyed> {
    /// The final state of each changed record, in order of first change.
    pub changes: Vec<Change<R>>,
    /// For each change, the table's indexes whose field may differ from the record's stored
    /// state (bit `k`: index `k`; bit 63 also stands for every index past it), found while
    /// both states are in the cache. [`Table::apply_hinted`] skips the others.
    pub changed_indexes: Vec<u64>,
    /// One result per operation.
    pub results: Vec<Settled<R>>,
    /// Inverse patches, in operation order.
    pub inverse: Vec<Inverse<R>>,
    /// Writes to persist, in operation order.
    pub entries: Vec<WriteEntry<R>>,
    /// The segments.
    pub segments: Vec<Segment>,
}

impl<R: Keyed> Plan<R> {
    /// Operations that restore the state before the operations `which` selects (their
    /// inverse patches, newest first).
    pub fn rollback(&self, which: impl Fn(usize) -> bool) -> Vec<Op<R>> {
        self.inverse
            .iter()
            .rev()
            .filter(|i| which(i.op))
            .map(|i| Op::Restore { id: i.id.clone(), entry: i.prev.clone() })
            .collect()
    }
}

/// How versions are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versions {
    /// A client: local writes keep the version; servers set it through writebacks.
    #[default]
    Client,
    /// A server (or a local executor acting as one): every write bumps the version, and
    /// update / delete / strict upsert need the matching base version.
    Server,
}

/// A check every record must pass before it is stored.
pub type Validate<'a, R> = &'a dyn Fn(&R) -> Result<(), String>;

/// Reduces operations over a table into a plan. See the module docs.
pub fn reduce<R>(
    table: &Table<R>,
    ops: Vec<(Op<R>, OpMeta)>,
    versions: Versions,
    validate: Option<Validate<'_, R>>,
) -> Plan<R>
where
    R: Keyed + Serialize + DeserializeOwned,
{
    let n = ops.len();
    let mut r = Reducer {
        table,
        overlay: IdMap::with_capacity_and_hasher(n, Default::default()),
        changes: Vec::with_capacity(n),
        masks: Vec::with_capacity(n),
        versions,
        validate,
    };
    let mut plan = Plan {
        changes: Vec::new(),
        changed_indexes: Vec::new(),
        results: Vec::with_capacity(n),
        inverse: Vec::with_capacity(n),
        entries: Vec::with_capacity(n),
        segments: Vec::new(),
    };
    // Each op's record is looked up in the table once, in a loop of independent lookups (the
    // processor overlaps their cache misses); the main loop prefetches the slots and records
    // of ops a few ahead, so that an update rarely waits on memory.
    let at: Vec<Option<u32>> =
        ops.iter().map(|(op, _)| op.target().and_then(|id| table.by_id.get(id).copied())).collect();
    let mut ops = ops;
    let mut step = |i: usize, slot: &mut (Op<R>, OpMeta), ready: Option<Ready<R>>| {
        let (op, meta) = std::mem::replace(slot, (Op::Hydrate(Vec::new()), OpMeta::default()));
        r.warm(&at, i);
        match plan.segments.last_mut() {
            Some(s) if s.origin == meta.origin && s.action_id == meta.action_id && s.route == meta.route => {
                s.ops.end = i + 1
            }
            _ => plan.segments.push(Segment {
                origin: meta.origin,
                action_id: meta.action_id.clone(),
                route: meta.route.clone(),
                ops: i..i + 1,
            }),
        }
        let result = r.one(i, op, meta, at[i], ready, &mut plan);
        plan.results.push(result);
    };
    // A large frame's updates are computed on a second thread from the last op back, while
    // this one reduces from the first op on (see [`run_ahead`]): the two meet where their
    // shares of the frame balance, however late the other thread starts.
    let closures =
        || ops.iter().filter(|(op, _)| matches!(op, Op::Update { with: UpdateWith::Closure(_), .. })).count();
    if n < AHEAD_MIN || parallelism() < 2 || closures() < AHEAD_CHUNK {
        ops.iter_mut().enumerate().for_each(|(i, slot)| step(i, slot, None));
    } else {
        let shared = shared_slots(table, &ops, &at);
        let chunks: Vec<Mutex<Chunk<'_, R>>> = ops
            .chunks_mut(AHEAD_CHUNK)
            .zip(at.chunks(AHEAD_CHUNK))
            .map(|(ops, at)| Mutex::new(Chunk { ops, at, ready: None, claimed: false }))
            .collect();
        // If no helper takes it in time, this thread computes every update in its turn.
        let ahead = || run_ahead(table, &chunks, &shared, versions);
        fork(1, ahead, || {
            let mut i = 0;
            for chunk in &chunks {
                // Waits only while the other thread is inside this chunk.
                let mut c = lock(chunk);
                // A chunk it has not reached yet is taken (and so it stops there).
                c.claimed = true;
                let mut ready = c.ready.take().unwrap_or_default().into_iter();
                for slot in c.ops.iter_mut() {
                    step(i, slot, ready.next().flatten());
                    i += 1;
                }
            }
        });
    }
    plan.changes = r.changes;
    plan.changed_indexes = r.masks;
    plan
}

/// Frames of at least this many ops compute some of their updates on a second thread.
const AHEAD_MIN: usize = if cfg!(debug_assertions) { 16 } else { 2048 };
/// An update computed ahead of the reducer by [`run_ahead`].
struct Ready<R> {
    /// The record after the update.
    next: Arc<R>,
    /// The indexes whose field the update changed (see [`Plan::changed_indexes`]).
    mask: u64,
}

/// Bit `s` set: slot `s` is the target of more than one op (hydrated entries included).
fn shared_slots<R: Keyed>(table: &Table<R>, ops: &[(Op<R>, OpMeta)], at: &[Option<u32>]) -> Vec<u64> {
    let words = table.slots.len() / 64 + 1;
    let mut once = vec![0u64; words];
    let mut more = vec![0u64; words];
    let mut mark = |s: u32| {
        let (w, b) = (s as usize / 64, 1u64 << (s % 64));
        more[w] |= once[w] & b;
        once[w] |= b;
    };
    at.iter().flatten().for_each(|&s| mark(s));
    for (op, _) in ops {
        if let Op::Hydrate(entries) = op {
            entries.iter().filter_map(|e| table.by_id.get(e.record.id())).for_each(|&s| mark(s));
        }
    }
    more
}

/// A run of the ops a second thread may compute ahead of the reducer.
struct Chunk<'o, R: Keyed> {
    ops: &'o mut [(Op<R>, OpMeta)],
    /// Their targets' slots.
    at: &'o [Option<u32>],
    /// What the second thread computed, per op.
    ready: Option<Vec<Option<Ready<R>>>>,
    /// The reducer reached the chunk: the second thread is done.
    claimed: bool,
}

/// Ops a second thread may compute ahead, in runs of this many.
const AHEAD_CHUNK: usize = if cfg!(debug_assertions) { 4 } else { 256 };

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic on the other thread is raised again when the scope ends.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Computes, ahead of the reducer, the updates that run a closure on a record nothing else
/// in the frame touches, and whose version check will pass: the copy of the record, the
/// closure's change and the comparison of the indexed fields are what the reducer would have
/// done in its turn (no op before it changes the record), and most of an update's cost.
/// Goes through the chunks from the last one back, and stops at the first one the reducer
/// reached first.
fn run_ahead<R: Keyed>(table: &Table<R>, chunks: &[Mutex<Chunk<'_, R>>], shared: &[u64], versions: Versions) {
    for chunk in chunks.iter().rev() {
        let mut c = lock(chunk);
        if c.claimed {
            return;
        }
        let c = &mut *c;
        let mut out = Vec::with_capacity(c.ops.len());
        for (j, (op, _)) in c.ops.iter_mut().enumerate() {
            if let Some(&Some(s)) = c.at.get(j + WARM_SLOTS) {
                prefetch(table.slots.as_ptr().wrapping_add(s as usize));
            }
            if let Some(&Some(s)) = c.at.get(j + WARM_RECORDS) {
                prefetch_record(table.slot(s));
            }
            if let Some(&Some(s)) = c.at.get(j + WARM_HEAP) {
                table.slot(s).inspect(|e| e.record.warm());
            }
            out.push(ready(table, op, c.at[j], shared, versions));
        }
        c.ready = Some(out);
    }
}

/// [`run_ahead`] for one op.
fn ready<R: Keyed>(
    table: &Table<R>,
    op: &mut Op<R>,
    at: Option<u32>,
    shared: &[u64],
    versions: Versions,
) -> Option<Ready<R>> {
    let (Op::Update { id, base_version, with: with @ UpdateWith::Closure(_) }, Some(s)) = (op, at) else {
        return None;
    };
    let cur = table.slot(s)?;
    let alone = shared.get(s as usize / 64).is_some_and(|w| w & (1u64 << (s % 64)) == 0);
    // The reducer's version check (`check_base`), which nothing before the op can change.
    let passes = match base_version {
        Some(b) => *b == cur.version,
        None => versions == Versions::Client,
    };
    if !(alone && passes) {
        return None;
    }
    // The closure moves out; the reducer does not look at `with` again.
    let UpdateWith::Closure(f) = std::mem::replace(with, UpdateWith::Merge(Map::new())) else { return None };
    let mut next = R::clone(&cur.record);
    f(&mut next);
    if next.id() != &*id {
        // Not an update the reducer may apply: it reports the changed id.
        *with = UpdateWith::Replace(next);
        return None;
    }
    let mask = table.indexes_changed(&cur.record, &next);
    Some(Ready { next: Arc::new(next), mask })
}

struct Reducer<'a, R: Keyed> {
    table: &'a Table<R>,
    /// Where each changed record is in `changes` (a record computed ahead is not here: no
    /// other op of the frame looks it up).
    overlay: IdMap<R::Id, usize>,
    /// Each changed record's state so far, in order of first change.
    changes: Vec<Change<R>>,
    /// Per change: the indexes it may touch (see [`Plan::changed_indexes`]).
    masks: Vec<u64>,
    versions: Versions,
    validate: Option<Validate<'a, R>>,
}

fn to_map<R: Serialize>(r: &R) -> Result<Map<String, Json>, String> {
    match serde_json::to_value(r) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err("a record must serialize to a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn from_map<R: DeserializeOwned>(m: Map<String, Json>) -> Result<R, String> {
    serde_json::from_value(Json::Object(m)).map_err(|e| e.to_string())
}

/// How many ops ahead the reducer prefetches a table slot.
const WARM_SLOTS: usize = 32;
/// How many ops ahead it prefetches the record in that slot (by then the slot is cached).
const WARM_RECORDS: usize = 12;
/// How many ops ahead it prefetches the record's heap buffers ([`Keyed::warm`]: by then the
/// record is cached).
const WARM_HEAP: usize = 6;

impl<R: Keyed + Serialize + DeserializeOwned> Reducer<'_, R> {
    /// The record as the ops so far left it; `at` is its slot in the table, if it has one.
    fn current(&self, id: &R::Id, at: Option<u32>) -> Option<&Entry<R>> {
        match self.overlay.get(id) {
            Some(&k) => self.changes[k].1.as_ref(),
            None => self.table.slot(at?),
        }
    }

    /// Prefetches the slot of op `i + WARM_SLOTS`, the record of op `i + WARM_RECORDS` (whose
    /// slot was prefetched earlier) and the heap buffers of op `i + WARM_HEAP`'s record: by
    /// their turn, none waits on memory.
    fn warm(&self, at: &[Option<u32>], i: usize) {
        if let Some(&Some(s)) = at.get(i + WARM_SLOTS) {
            prefetch(self.table.slots.as_ptr().wrapping_add(s as usize));
        }
        if let Some(&Some(s)) = at.get(i + WARM_RECORDS) {
            prefetch_record(self.table.slot(s));
        }
        if let Some(&Some(s)) = at.get(i + WARM_HEAP) {
            self.table.slot(s).inspect(|e| e.record.warm());
        }
    }

    fn set(&mut self, op: usize, id: R::Id, at: Option<u32>, next: Option<Entry<R>>, plan: &mut Plan<R>) {
        let prev = self.current(&id, at).cloned();
        match self.overlay.entry(id) {
            hash_map::Entry::Occupied(o) => {
                // Changed again: compared with the stored state by the table.
                let k = *o.get();
                plan.inverse.push(Inverse { op, id: o.key().clone(), prev });
                self.changes[k].1 = next;
                self.masks[k] = u64::MAX;
            }
            hash_map::Entry::Vacant(v) => {
                // The first change: `prev` is the stored state.
                let mask = match (&prev, &next) {
                    (Some(before), Some(after)) => self.table.indexes_changed(&before.record, &after.record),
                    _ => u64::MAX,
                };
                let id = v.key().clone();
                v.insert(self.changes.len());
                plan.inverse.push(Inverse { op, id: id.clone(), prev });
                self.changes.push((id, next));
                self.masks.push(mask);
            }
        }
    }

    /// [`set`](Self::set) for an update computed ahead: its record is changed once in the
    /// frame, from its stored state, so no later op looks it up.
    fn set_ready(&mut self, op: usize, id: R::Id, prev: Entry<R>, next: Entry<R>, mask: u64, plan: &mut Plan<R>) {
        plan.inverse.push(Inverse { op, id: id.clone(), prev: Some(prev) });
        self.changes.push((id, Some(next)));
        self.masks.push(mask);
    }

    fn check(&self, r: &R) -> Result<(), WriteError<R>> {
        match self.validate {
            Some(v) => v(r).map_err(WriteError::Invalid),
            None => Ok(()),
        }
    }

    /// The version check: a given base must match; a server also demands one.
    fn check_base(&self, id: &R::Id, base: Option<u64>, cur: &Entry<R>, required: bool) -> Result<(), WriteError<R>> {
        let ok = match base {
            Some(b) => b == cur.version,
            None => !(required && self.versions == Versions::Server),
        };
        if ok {
            Ok(())
        } else {
            Err(WriteError::Conflict { id: id.clone(), base, current: Some(Box::new(cur.clone())) })
        }
    }

    fn next_version(&self, cur: Option<&Entry<R>>) -> u64 {
        let v = cur.map_or(0, |c| c.version);
        match self.versions {
            Versions::Client => v,
            Versions::Server => v + 1,
        }
    }

    fn entry(
        op: usize,
        action: WriteAction,
        id: R::Id,
        base: Option<u64>,
        value: Option<Arc<R>>,
        meta: OpMeta,
    ) -> WriteEntry<R> {
        WriteEntry {
            op,
            action,
            id,
            base_version: base,
            value,
            merge: None,
            patch: Vec::new(),
            upsert_mode: None,
            meta,
        }
    }

    fn one(
        &mut self,
        i: usize,
        op: Op<R>,
        meta: OpMeta,
        at: Option<u32>,
        ready: Option<Ready<R>>,
        plan: &mut Plan<R>,
    ) -> Settled<R> {
        let confirmed = |e: Option<&Entry<R>>| e.map(|e| e.version).filter(|v| *v > 0);
        match op {
            Op::Hydrate(entries) => {
                for e in entries {
                    let id = e.record.id().clone();
                    let at = self.table.by_id.get(&id).copied();
                    if self.current(&id, at).is_none() && !self.overlay.contains_key(&id) {
                        self.set(i, id, at, Some(e), plan);
                    }
                }
                Ok(Applied { id: None, version: None })
            }
            Op::Create(record) => {
                let id = record.id().clone();
                if self.current(&id, at).is_some() {
                    return Err(WriteError::Duplicate(id));
                }
                self.check(&record)?;
                let version = self.next_version(None);
                let record = Arc::new(record);
                plan.entries.push(Self::entry(i, WriteAction::Create, id.clone(), None, Some(record.clone()), meta));
                self.set(i, id.clone(), at, Some(Entry::new(record, version)), plan);
                Ok(Applied { id: Some(id), version: Some(version) })
            }
            Op::Update { id, base_version, with } => {
                // An update computed ahead is the only op on its record: not in the overlay.
                let cur = match ready {
                    Some(_) => at.and_then(|s| self.table.slot(s)),
                    None => self.current(&id, at),
                };
                let Some(cur) = cur else { return Err(WriteError::NotFound(id)) };
                self.check_base(&id, base_version, cur, true)?;
                let base = base_version.or(confirmed(Some(cur)));
                if let Some(Ready { next, mask }) = ready {
                    self.check(&next)?;
                    let version = self.next_version(Some(cur));
                    let prev = cur.clone();
                    plan.entries.push(Self::entry(i, WriteAction::Update, id.clone(), base, Some(next.clone()), meta));
                    self.set_ready(i, id.clone(), prev, Entry::new(next, version), mask, plan);
                    return Ok(Applied { id: Some(id), version: Some(version) });
                }
                let mut merged = None;
                let next = match with {
                    UpdateWith::Replace(r) => r,
                    UpdateWith::Closure(f) => {
                        let mut r = R::clone(&cur.record);
                        f(&mut r);
                        r
                    }
                    UpdateWith::Merge(fields) => {
                        let mut m = to_map(&*cur.record).map_err(WriteError::Invalid)?;
                        for (k, v) in &fields {
                            m.insert(k.clone(), v.clone());
                        }
                        merged = Some(fields);
                        from_map(m).map_err(WriteError::Invalid)?
                    }
                };
                if next.id() != &id {
                    return Err(WriteError::Invalid(format!("an update may not change the id ({id} → {})", next.id())));
                }
                self.check(&next)?;
                let version = self.next_version(Some(cur));
                let next = Arc::new(next);
                let mut e = Self::entry(i, WriteAction::Update, id.clone(), base, Some(next.clone()), meta);
                e.merge = merged;
                plan.entries.push(e);
                self.set(i, id.clone(), at, Some(Entry::new(next, version)), plan);
                Ok(Applied { id: Some(id), version: Some(version) })
            }
            Op::Upsert { record, merge, mode, base_version } => {
                let id = record.id().clone();
                let cur = self.current(&id, at);
                if let Some(cur) = cur
                    && mode == UpsertMode::Strict
                {
                    self.check_base(&id, base_version, cur, true)?;
                }
                let base = base_version.or(confirmed(cur));
                let next = match (cur, merge) {
                    (Some(cur), true) => {
                        let mut m = to_map(&*cur.record).map_err(WriteError::Invalid)?;
                        m.extend(to_map(&record).map_err(WriteError::Invalid)?);
                        from_map(m).map_err(WriteError::Invalid)?
                    }
                    _ => record,
                };
                self.check(&next)?;
                let version = self.next_version(cur);
                let next = Arc::new(next);
                let mut e = Self::entry(i, WriteAction::Upsert, id.clone(), base, Some(next.clone()), meta);
                e.upsert_mode = Some(mode);
                plan.entries.push(e);
                self.set(i, id.clone(), at, Some(Entry::new(next, version)), plan);
                Ok(Applied { id: Some(id), version: Some(version) })
            }
            Op::Delete { id, base_version } => {
                let Some(cur) = self.current(&id, at) else { return Err(WriteError::NotFound(id)) };
                self.check_base(&id, base_version, cur, true)?;
                let base = base_version.or(confirmed(Some(cur)));
                plan.entries.push(Self::entry(i, WriteAction::Delete, id.clone(), base, None, meta));
                self.set(i, id.clone(), at, None, plan);
                Ok(Applied { id: Some(id), version: None })
            }
            Op::Patch { id, base_version, ops } => {
                let Some(cur) = self.current(&id, at) else { return Err(WriteError::NotFound(id)) };
                let commutative = ops.iter().all(PatchOp::is_commutative);
                self.check_base(&id, base_version, cur, !commutative)?;
                // Commutative ops go without a base version: hot counters never conflict.
                let base = if commutative { base_version } else { base_version.or(confirmed(Some(cur))) };
                let mut m = to_map(&*cur.record).map_err(WriteError::Invalid)?;
                apply_patch(&mut m, &ops).map_err(|e| WriteError::Invalid(e.to_string()))?;
                let next: R = from_map(m).map_err(WriteError::Invalid)?;
                self.check(&next)?;
                let version = self.next_version(Some(cur));
                let next = Arc::new(next);
                let mut e = Self::entry(i, WriteAction::Patch, id.clone(), base, Some(next.clone()), meta);
                e.patch = ops;
                plan.entries.push(e);
                self.set(i, id.clone(), at, Some(Entry::new(next, version)), plan);
                Ok(Applied { id: Some(id), version: Some(version) })
            }
            Op::Writeback { id, version, record } => {
                let Some(cur) = self.current(&id, at) else { return Ok(Applied { id: Some(id), version: None }) };
                if version < cur.version {
                    // A later confirmation already moved the record on: versions never go back.
                    return Ok(Applied { id: Some(id), version: Some(cur.version) });
                }
                if record.is_none() && cur.version == version {
                    return Ok(Applied { id: Some(id), version: Some(version) });
                }
                let next = Entry::new(record.map_or_else(|| cur.record.clone(), Arc::new), version);
                self.set(i, id.clone(), at, Some(next), plan);
                Ok(Applied { id: Some(id), version: Some(version) })
            }
            Op::Remote { id, version, record } => {
                if let Some(cur) = self.current(&id, at)
                    && cur.version > version
                {
                    // The local copy is newer than the change: keep it.
                    return Ok(Applied { id: Some(id), version: Some(cur.version) });
                }
                if self.current(&id, at).is_none() && record.is_none() {
                    return Ok(Applied { id: Some(id), version: None });
                }
                let next = record.map(|r| Entry::new(r, version));
                let v = next.as_ref().map(|e| e.version);
                self.set(i, id.clone(), at, next, plan);
                Ok(Applied { id: Some(id), version: v })
            }
            Op::Restore { id, entry } => {
                let v = entry.as_ref().map(|e| e.version);
                self.set(i, id.clone(), at, entry, plan);
                Ok(Applied { id: Some(id), version: v })
            }
        }
    }
}
