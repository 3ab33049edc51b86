//! The ordered index: a sorted set of (value, slot) in chunks, for ranges, prefixes and
//! sorting.

use std::ops::Bound;

use super::chunked::ChunkedSet;
use super::each_scalar;
use crate::core::value::{Key, Value};

/// Entries queued for an ordered index during a large commit.
#[derive(Debug, Default)]
pub(crate) struct OrderedBatch {
    remove: Vec<(Key, u32)>,
    insert: Vec<(Key, u32)>,
}

impl OrderedBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self { remove: Vec::with_capacity(n), insert: Vec::with_capacity(n) }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.insert.is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct OrderedIndex {
    set: ChunkedSet<(Key, u32)>,
    /// Records whose value is not one scalar (lists, objects, NaN): while any exist, the index
    /// cannot give the sort order (it holds list elements, not whole lists).
    irregular: usize,
}

fn is_regular(v: Option<Value<'_>>) -> bool {
    match v {
        None => true,
        Some(Value::List(_) | Value::Object(_)) => false,
        Some(Value::Float(x)) => !x.is_nan(),
        Some(_) => true,
    }
}

impl OrderedIndex {
    fn each(v: Option<Value<'_>>, mut f: impl FnMut(Key)) {
        match v {
            None => f(Key::Null),
            Some(v) => each_scalar(v, &mut |s| {
                if !matches!(s, Value::Float(x) if x.is_nan()) {
                    f(s.to_key());
                }
            }),
        }
    }

    pub fn insert(&mut self, slot: u32, v: Option<Value<'_>>) {
        if !is_regular(v) {
            self.irregular += 1;
        }
        Self::each(v, |k| {
            self.set.insert((k, slot));
        });
    }

    pub fn remove(&mut self, slot: u32, v: Option<Value<'_>>) {
        if !is_regular(v) {
            self.irregular = self.irregular.saturating_sub(1);
        }
        Self::each(v, |k| {
            self.set.remove(&(k, slot));
        });
    }

    /// Like [`insert`](Self::insert), with the entries queued in `batch` (see
    /// [`apply_batch`](Self::apply_batch)).
    pub fn defer_insert(&mut self, slot: u32, v: Option<Value<'_>>, batch: &mut OrderedBatch) {
        if !is_regular(v) {
            self.irregular += 1;
        }
        Self::each(v, |k| batch.insert.push((k, slot)));
    }

    /// Like [`remove`](Self::remove), with the entries queued in `batch`.
    pub fn defer_remove(&mut self, slot: u32, v: Option<Value<'_>>, batch: &mut OrderedBatch) {
        if !is_regular(v) {
            self.irregular = self.irregular.saturating_sub(1);
        }
        Self::each(v, |k| batch.remove.push((k, slot)));
    }

    /// Applies queued entries: removals, then insertions, each in key order (neighbouring
    /// keys share B-tree nodes, which stay in cache). A batch must not remove an entry it
    /// inserts.
    pub fn apply_batch(&mut self, batch: &mut OrderedBatch) {
        let mut remove = std::mem::take(&mut batch.remove);
        let mut insert = std::mem::take(&mut batch.insert);
        remove.sort_unstable();
        remove.dedup();
        insert.sort_unstable();
        insert.dedup();
        self.set.apply_sorted(remove, insert);
    }

    /// Whether walking the index gives every record once, in sort order of this field.
    pub fn sortable(&self) -> bool {
        self.irregular == 0
    }

    /// Entries with keys in a range.
    pub fn range(&self, lo: Bound<&Key>, hi: Bound<&Key>) -> impl DoubleEndedIterator<Item = &(Key, u32)> {
        let lo = match lo {
            Bound::Included(k) => Bound::Included((k.clone(), 0)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), u32::MAX)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match hi {
            Bound::Included(k) => Bound::Included((k.clone(), u32::MAX)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.set.range(lo.as_ref(), hi.as_ref())
    }

    pub fn heap_size(&self) -> usize {
        self.set.heap_size() + self.set.iter().map(|(k, _)| k.heap_size()).sum::<usize>()
    }
}
