//! The ordered index: a B-tree of (value, slot) for ranges, prefixes and sorting.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::each_scalar;
use crate::core::value::{Key, Value};

#[derive(Debug, Default)]
pub(crate) struct OrderedIndex {
    set: BTreeSet<(Key, u32)>,
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
        self.set.range((lo, hi))
    }

    pub fn heap_size(&self) -> usize {
        // B-tree nodes hold up to 11 entries and are about half full after random inserts
        // (measured: RSS grows ~1.5× the raw entry size), plus node headers.
        let entry = size_of::<(Key, u32)>();
        self.set.len() * entry * 3 / 2 + self.set.iter().map(|(k, _)| k.heap_size()).sum::<usize>()
    }
}
