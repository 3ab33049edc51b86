//! The records of one store with their versions and indexes.
//!
//! Records live in slots; indexes hold slot numbers. [`Table::apply`] is the only way records
//! change: it takes a commit's changed records and updates each index once, touching only the
//! indexes whose field changed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::core::fields::Keyed;
use crate::core::helpers::{fork, parallelism};
use crate::core::index::{FieldIndex, IndexSpec, OrderedBatch};

/// A map keyed by record ids (foldhash: ids are hashed on every write).
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set of record ids.
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Commits of at least this many changes queue their ordered-index entries.
const BATCH_MIN: usize = 64;
/// Commits of at least this many changes (to distinct records) update their indexes in
/// parallel, one task per index. Debug builds (the tests) use small commits, so that the
/// parallel path is exercised by small tables.
const PARALLEL_MIN: usize = if cfg!(debug_assertions) { 16 } else { 2048 };

/// How far ahead a parallel index update loads the records it will read.
const WARM_AHEAD: usize = 8;

/// Asks the processor to bring the cache line holding `p` closer. Nothing the program
/// computes depends on it: a prefetch of any address, valid or not, is a hint.
#[inline(always)]
#[cfg_attr(target_arch = "x86_64", expect(unsafe_code, reason = "a prefetch hint on a measured hot path"))]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` reads nothing into the program and never faults, whatever the
    // address; SSE, which the intrinsic requires, is part of every x86_64 target.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the first cache line of a heap buffer (nothing when it is empty).
#[inline(always)]
pub(crate) fn prefetch_bytes(b: &[u8]) {
    if !b.is_empty() {
        prefetch(b.as_ptr());
    }
}

/// Prefetches a record (its first two cache lines: the fields a key or a clone reads first).
#[inline(always)]
pub(crate) fn prefetch_record<R>(e: Option<&Entry<R>>) {
    if let Some(e) = e {
        let p = Arc::as_ptr(&e.record);
        prefetch(p);
        if size_of::<R>() > 48 {
            prefetch(p.wrapping_byte_add(64));
        }
    }
}

/// A set of slots (a bit per slot), cleared by what was set.
#[derive(Default)]
struct Touched {
    bits: Vec<u64>,
    set: Vec<u32>,
}

impl Touched {
    /// Adds a slot; `false` if it was there.
    fn insert(&mut self, s: u32) -> bool {
        let (w, m) = ((s / 64) as usize, 1u64 << (s % 64));
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & m != 0 {
            return false;
        }
        self.bits[w] |= m;
        self.set.push(s);
        true
    }

    fn clear(&mut self) {
        for s in self.set.drain(..) {
            if let Some(w) = self.bits.get_mut((s / 64) as usize) {
                *w = 0;
            }
        }
    }
}

/// A stored record and its server version (0: never confirmed by a server).
///
/// The record is shared (`Arc`): the table, a write's entry, its inverse patch and history
/// hold one copy of it between them, so a write copies its record once (an update's closure
/// changes a copy of the current record) however many places keep it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<R> {
    /// The record.
    pub record: Arc<R>,
    /// The server version.
    pub version: u64,
}

impl<R> Entry<R> {
    /// An entry of a record (owned or already shared).
    pub fn new(record: impl Into<Arc<R>>, version: u64) -> Self {
        Self { record: record.into(), version }
    }
}

/// A change to one record: its state after the commit (`None`: deleted).
pub type Change<R> = (<R as Keyed>::Id, Option<Entry<R>>);

/// The records of a store, indexed.
pub struct Table<R: Keyed> {
    pub(crate) slots: Vec<Option<Entry<R>>>,
    pub(crate) by_id: IdMap<R::Id, u32>,
    free: Vec<u32>,
    pub(crate) indexes: Vec<FieldIndex>,
    /// The largest id ever inserted, while `id_ordered` holds.
    last_id: Option<R::Id>,
    /// Whether slot order is id order (records arrived in increasing id order and no slot
    /// was reused): then slot-ordered candidate lists are already in id order.
    pub(crate) id_ordered: bool,
}

impl<R: Keyed> Default for Table<R> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            by_id: IdMap::default(),
            free: Vec::new(),
            indexes: Vec::new(),
            last_id: None,
            id_ordered: true,
        }
    }
}

impl<R: Keyed + std::fmt::Debug> std::fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len())
            .field("indexes", &self.index_specs().collect::<Vec<_>>())
            .finish()
    }
}

pub(crate) fn cmp_slot_ids<R: Keyed>(slots: &[Option<Entry<R>>], a: u32, b: u32) -> Ordering {
    match (slots.get(a as usize).and_then(Option::as_ref), slots.get(b as usize).and_then(Option::as_ref)) {
        (Some(x), Some(y)) => x.record.id().cmp(y.record.id()),
        _ => a.cmp(&b),
    }
}

impl<R: Keyed> Table<R> {
    /// An empty table with these indexes.
    pub fn new(indexes: impl IntoIterator<Item = IndexSpec>) -> Self {
        let mut t = Self::default();
        for spec in indexes {
            t.add_index(spec);
        }
        t
    }

    /// Adds an index (built over the current records). Adding one that exists does nothing.
    pub fn add_index(&mut self, spec: IndexSpec) {
        if self.indexes.iter().any(|i| i.spec == spec) {
            return;
        }
        let mut index = FieldIndex::new(spec);
        let slots = &self.slots;
        let by_id = |a, b| cmp_slot_ids(slots, a, b);
        // Insert in id order so that id-ordered postings append.
        let mut order: Vec<u32> = (0..slots.len() as u32).filter(|&s| slots[s as usize].is_some()).collect();
        order.sort_by(|&a, &b| by_id(a, b));
        for s in order {
            if let Some(e) = &slots[s as usize] {
                index.insert(s, &*e.record, &by_id);
            }
        }
        self.indexes.push(index);
    }

    /// The indexes this table keeps.
    pub fn index_specs(&self) -> impl Iterator<Item = &IndexSpec> {
        self.indexes.iter().map(|i| &i.spec)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The record with this id.
    pub fn get(&self, id: &R::Id) -> Option<&R> {
        self.entry(id).map(|e| &*e.record)
    }

    /// The record with this id and its version.
    pub fn entry(&self, id: &R::Id) -> Option<&Entry<R>> {
        let slot = *self.by_id.get(id)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Whether a record with this id is present.
    pub fn contains(&self, id: &R::Id) -> bool {
        self.by_id.contains_key(id)
    }

    /// All records and versions, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<R>> {
        self.slots.iter().filter_map(Option::as_ref)
    }

    pub(crate) fn slot(&self, s: u32) -> Option<&Entry<R>> {
        self.slots.get(s as usize).and_then(Option::as_ref)
    }

    /// Applies a commit: each change sets (or with `None` deletes) one record; each index is
    /// updated once per changed record, and only where its field changed.
    ///
    /// A large commit queues its ordered-index entries and applies them sorted by key (merged
    /// into the index in one pass when the commit is large against it).
    ///
    /// Returns how many records changed.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change<R>>) -> usize {
        self.apply_keeping(changes, &mut Vec::new())
    }

    /// [`apply`](Self::apply), moving the entries it replaces or deletes into `old` instead
    /// of dropping them (a caller can free them elsewhere: off the game thread).
    pub fn apply_keeping(&mut self, changes: impl IntoIterator<Item = Change<R>>, old: &mut Vec<Entry<R>>) -> usize {
        self.apply_hinted(changes.into_iter().map(|c| (c, u64::MAX)), old)
    }

    /// [`apply_keeping`](Self::apply_keeping) with each change's
    /// [`indexes_changed`](Self::indexes_changed) against the stored record (`u64::MAX`: not
    /// known). Indexes outside a change's mask are not touched for it, so a mask must come
    /// from the record as stored now: [`Plan::changed_indexes`](crate::core::Plan) of a plan
    /// reduced over this table, before any other commit, is one.
    pub fn apply_hinted(
        &mut self,
        changes: impl IntoIterator<Item = (Change<R>, u64)>,
        old: &mut Vec<Entry<R>>,
    ) -> usize {
        let changes = changes.into_iter();
        if changes.size_hint().0 >= PARALLEL_MIN && self.indexes.len() >= 2 && parallelism() >= 2 {
            let changes: Vec<(Change<R>, u64)> = changes.collect();
            return match self.apply_parallel(changes, old) {
                Ok(n) => n,
                // A record changed twice: the sequential path orders its index updates.
                Err(changes) => self.apply_sequential(changes.into_iter(), old),
            };
        }
        self.apply_sequential(changes, old)
    }

    /// Which indexes see a different value between two states of a record: bit `k` for
    /// index `k`; bit 63 is always set when there are more than 63 indexes.
    pub fn indexes_changed(&self, old: &R, new: &R) -> u64 {
        let mut changed = 0u64;
        for (k, i) in self.indexes.iter().enumerate() {
            if k >= 63 || i.changed(old, new) {
                changed |= 1u64 << k.min(63);
            }
        }
        changed
    }

    /// [`apply_keeping`](Self::apply_keeping) one change after another.
    fn apply_sequential(&mut self, changes: impl Iterator<Item = (Change<R>, u64)>, old: &mut Vec<Entry<R>>) -> usize {
        let batched = changes.size_hint().0 >= BATCH_MIN && self.indexes.iter().any(FieldIndex::batches);
        let hint = changes.size_hint().0;
        let mut batch: Vec<Option<OrderedBatch>> =
            self.indexes.iter().map(|i| (batched && i.batches()).then(|| OrderedBatch::with_capacity(hint))).collect();
        // Slots changed since the queued entries were applied: a slot changed twice in one
        // commit (a repeated id, or a freed slot taken again) applies the queue first, so that
        // no queued removal overtakes an insertion of the same entry.
        let mut touched = Touched::default();
        if batched {
            // One allocation each for the commit (new records take slots past the current
            // ones): a vector regrown mid-frame can make glibc consolidate its free lists, a
            // 20-30 ms stall after a frame freed many small JSON nodes.
            touched.bits = vec![0; (self.slots.len() + hint) / 64 + 1];
            touched.set = Vec::with_capacity(hint);
        }
        old.reserve(hint);
        let mut n = 0;
        for ((id, next), hint) in changes {
            n += 1;
            let slot = self.by_id.get(&id).copied();
            if batched {
                let s = slot.or_else(|| self.free.last().copied()).unwrap_or(self.slots.len() as u32);
                if !touched.insert(s) {
                    self.flush_batch(&mut batch);
                    touched.clear();
                    touched.insert(s);
                }
            }
            match (slot, next) {
                (Some(slot), Some(next)) => old.extend(self.replace(slot, next, hint, &mut batch)),
                (Some(slot), None) => old.extend(self.delete(slot, &id, &mut batch)),
                (None, Some(next)) => self.insert(id, next, &mut batch),
                (None, None) => n -= 1,
            }
        }
        self.flush_batch(&mut batch);
        n
    }

    /// A large commit of distinct records: the records move into their slots first, then every
    /// index is updated from the old and new records on its own thread (indexes share nothing
    /// but read access to the slots), then deleted slots are freed. Hands the changes back
    /// untouched when a record appears twice.
    fn apply_parallel(
        &mut self,
        changes: Vec<(Change<R>, u64)>,
        old: &mut Vec<Entry<R>>,
    ) -> Result<usize, Vec<(Change<R>, u64)>> {
        // Each record's slot, looked up once.
        let at: Vec<Option<u32>> = changes.iter().map(|((id, _), _)| self.by_id.get(id).copied()).collect();
        // Each existing record once.
        let mut seen = Touched { bits: vec![0; self.slots.len() / 64 + 1], set: Vec::with_capacity(changes.len()) };
        for s in at.iter().flatten() {
            if !seen.insert(*s) {
                return Err(changes);
            }
        }
        // Each new id once too (a later change of it would find the slot phase 1 gave it).
        let mut new_ids: IdSet<&R::Id> = IdSet::default();
        for (((id, _), _), s) in changes.iter().zip(&at) {
            if s.is_none() && !new_ids.insert(id) {
                return Err(changes);
            }
        }
        drop(new_ids);
        // 1. Records into their slots. A deleted record stays in place until its index
        //    entries are gone (postings in id order compare against it).
        let mut edits: Vec<(u32, Option<Entry<R>>, bool, u64)> = Vec::with_capacity(changes.len());
        let mut deleted: Vec<(u32, R::Id)> = Vec::new();
        for (((id, next), hint), at) in changes.into_iter().zip(at) {
            match (at, next) {
                (Some(slot), Some(next)) => {
                    let prev = self.slots[slot as usize].replace(next);
                    edits.push((slot, prev, true, hint));
                }
                (Some(slot), None) => {
                    edits.push((slot, None, false, u64::MAX));
                    deleted.push((slot, id));
                }
                (None, Some(next)) => {
                    let slot = self.place(id, next);
                    edits.push((slot, None, true, u64::MAX));
                }
                (None, None) => {}
            }
        }
        // 2. Each index, on its own thread: remove what the old record had, add what the new
        //    one has (only where the field changed).
        let slots = &self.slots;
        let edits_ref = &edits;
        let update = |(k, index): (usize, &mut FieldIndex)| {
            let by_id = |a, b| cmp_slot_ids(slots, a, b);
            let mut batch = index.batches().then(|| OrderedBatch::with_capacity(edits_ref.len()));
            let bit = 1u64 << k.min(63);
            for (i, (slot, prev, present, hint)) in edits_ref.iter().enumerate() {
                if hint & bit == 0 {
                    continue;
                }
                // The records of an edit a few ahead, into the cache (they are read for their
                // keys, and are rarely still cached from the reduce).
                if let Some((s, p, _, h)) = edits_ref.get(i + WARM_AHEAD)
                    && h & bit != 0
                {
                    prefetch_record(p.as_ref());
                    prefetch_record(slots.get(*s as usize).and_then(Option::as_ref));
                }
                let now = slots[*slot as usize].as_ref().map(|e| &*e.record);
                // A delete's record is still in its slot: it is the old one.
                let (before, after) = if *present { (prev.as_ref().map(|e| &*e.record), now) } else { (now, None) };
                // A precise hint already compared the field.
                if let (Some(b), Some(a)) = (before, after)
                    && *hint == u64::MAX
                    && !index.changed(b, a)
                {
                    continue;
                }
                if let Some(b) = before {
                    index.remove_in(*slot, b, &by_id, batch.as_mut());
                }
                if let Some(a) = after {
                    index.insert_in(*slot, a, &by_id, batch.as_mut());
                }
            }
            if let Some(b) = &mut batch {
                index.apply_batch(b);
            }
        };
        let workers = parallelism().min(self.indexes.len());
        // Each worker takes the next index not yet taken; this thread works too, so a thread
        // that cannot start only leaves more to the others.
        let queue = std::sync::Mutex::new(self.indexes.iter_mut().enumerate());
        let work = || loop {
            // The lock is held only to take the next index.
            let Some(index) = queue.lock().unwrap_or_else(|p| p.into_inner()).next() else { break };
            update(index);
        };
        fork(workers - 1, work, work);
        // 3. Deleted records leave their slots.
        let n = edits.len();
        for (slot, prev, present, _) in edits {
            if present {
                old.extend(prev);
            } else if let Some(e) = self.slots[slot as usize].take() {
                old.push(e);
            }
        }
        for (slot, id) in deleted {
            self.by_id.remove(&id);
            self.free.push(slot);
        }
        Ok(n)
    }

    /// Moves records to newer versions (acks that change nothing else: no index is touched).
    /// A version at or below the record's is ignored, as is a missing record. Adds the ids
    /// that moved to `moved`; returns how many.
    pub fn set_versions(&mut self, versions: Vec<(R::Id, u64)>, moved: &mut Vec<R::Id>) -> usize {
        moved.reserve(versions.len());
        let mut n = 0;
        for (id, version) in versions {
            let Some(&slot) = self.by_id.get(&id) else { continue };
            if let Some(Some(e)) = self.slots.get_mut(slot as usize)
                && version > e.version
            {
                e.version = version;
                moved.push(id);
                n += 1;
            }
        }
        n
    }

    fn flush_batch(&mut self, batch: &mut [Option<OrderedBatch>]) {
        for (index, b) in self.indexes.iter_mut().zip(batch.iter_mut()) {
            if let Some(b) = b
                && !b.is_empty()
            {
                index.apply_batch(b);
            }
        }
    }

    /// Sets a slot's entry; returns the one it held.
    fn replace(
        &mut self,
        slot: u32,
        next: Entry<R>,
        hint: u64,
        batch: &mut [Option<OrderedBatch>],
    ) -> Option<Entry<R>> {
        let old = self.slots[slot as usize].take()?;
        // Which indexes see a change (the 64th and those after it are always updated).
        let changed = if hint == u64::MAX { self.indexes_changed(&old.record, &next.record) } else { hint };
        let is_changed = |k: usize| k >= 63 || changed & (1u64 << k) != 0;
        if changed == 0 {
            // Only the version or unindexed fields changed.
            self.slots[slot as usize] = Some(next);
            return Some(old);
        }
        // Remove with the old record in place (id-ordered postings compare against it).
        self.slots[slot as usize] = Some(old);
        {
            let slots = &self.slots;
            let by_id = |a, b| cmp_slot_ids(slots, a, b);
            for (k, (index, b)) in self.indexes.iter_mut().zip(batch.iter_mut()).enumerate() {
                if is_changed(k)
                    && let Some(e) = &slots[slot as usize]
                {
                    index.remove_in(slot, &*e.record, &by_id, b.as_mut());
                }
            }
        }
        let old = self.slots[slot as usize].replace(next);
        let slots = &self.slots;
        let by_id = |a, b| cmp_slot_ids(slots, a, b);
        for (k, (index, b)) in self.indexes.iter_mut().zip(batch.iter_mut()).enumerate() {
            if is_changed(k)
                && let Some(e) = &slots[slot as usize]
            {
                index.insert_in(slot, &*e.record, &by_id, b.as_mut());
            }
        }
        old
    }

    /// Empties a slot; returns the entry it held.
    fn delete(&mut self, slot: u32, id: &R::Id, batch: &mut [Option<OrderedBatch>]) -> Option<Entry<R>> {
        {
            let slots = &self.slots;
            let by_id = |a, b| cmp_slot_ids(slots, a, b);
            if let Some(e) = &slots[slot as usize] {
                for (index, b) in self.indexes.iter_mut().zip(batch.iter_mut()) {
                    index.remove_in(slot, &*e.record, &by_id, b.as_mut());
                }
            }
        }
        let old = self.slots[slot as usize].take();
        self.by_id.remove(id);
        self.free.push(slot);
        old
    }

    /// Puts a new record in a free slot (or a new one) and maps its id there; returns the slot.
    fn place(&mut self, id: R::Id, next: Entry<R>) -> u32 {
        if self.id_ordered {
            // Appending a larger id keeps slot order equal to id order; anything else ends it.
            if !self.free.is_empty() || self.last_id.as_ref().is_some_and(|last| *last >= id) {
                self.id_ordered = false;
                self.last_id = None;
            } else {
                self.last_id = Some(id.clone());
            }
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(next);
                s
            }
            None => {
                self.slots.push(Some(next));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    fn insert(&mut self, id: R::Id, next: Entry<R>, batch: &mut [Option<OrderedBatch>]) {
        let slot = self.place(id, next);
        let slots = &self.slots;
        let by_id = |a, b| cmp_slot_ids(slots, a, b);
        if let Some(e) = &slots[slot as usize] {
            for (index, b) in self.indexes.iter_mut().zip(batch.iter_mut()) {
                index.insert_in(slot, &*e.record, &by_id, b.as_mut());
            }
        }
    }

    /// Approximate bytes the indexes hold (the records themselves excluded).
    pub fn index_heap_size(&self) -> usize {
        self.indexes.iter().map(FieldIndex::heap_size).sum()
    }

    /// Approximate bytes of each index, by field and kind.
    pub fn index_sizes(&self) -> Vec<(IndexSpec, usize)> {
        self.indexes.iter().map(|i| (i.spec.clone(), i.heap_size())).collect()
    }
}
