//! The ordered index: a sorted set of (value, slot) in chunks, for ranges, prefixes and
//! sorting.
//!
//! While every key is an integer or null (levels, scores, timestamps: the common case), the
//! entries are packed into 16 bytes each instead of 32 (`(Key, u32)`), which halves the
//! memory a large commit's merge streams through and makes comparisons one integer compare.
//! The first key of another kind converts the index to the general form, once.

use std::borrow::Cow;
use std::ops::Bound;

use super::chunked::ChunkedSet;
use super::each_scalar;
use crate::core::value::{Key, Value};

/// An entry whose key is an integer or null, packed so that integer order is entry order:
/// bit 96 is set for an integer, bits 32..96 hold it (sign bit flipped), bits 0..32 the slot.
/// Null sorts first, as [`Key`] orders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Packed(u128);

impl Packed {
    const INT: u128 = 1 << 96;

    /// The packed entry, if the key packs.
    fn new(k: &Key, slot: u32) -> Option<Self> {
        match k {
            Key::Null => Some(Self(u128::from(slot))),
            Key::Int(v) => Some(Self(Self::INT | u128::from((*v as u64) ^ (1 << 63)) << 32 | u128::from(slot))),
            _ => None,
        }
    }

    fn key(self) -> Key {
        if self.0 & Self::INT == 0 { Key::Null } else { Key::Int((((self.0 >> 32) as u64) ^ (1 << 63)) as i64) }
    }

    fn slot(self) -> u32 {
        self.0 as u32
    }

    fn unpack(self) -> (Key, u32) {
        (self.key(), self.slot())
    }
}

/// The entries, packed while every key packs.
#[derive(Debug)]
enum Entries {
    Packed(ChunkedSet<Packed>),
    Keys(ChunkedSet<(Key, u32)>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Packed(ChunkedSet::default())
    }
}

/// Entries queued for an ordered index during a large commit.
#[derive(Debug, Default)]
pub(crate) struct OrderedBatch {
    remove: Vec<(Key, u32)>,
    insert: Vec<(Key, u32)>,
    remove_packed: Vec<Packed>,
    insert_packed: Vec<Packed>,
}

impl OrderedBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            remove: Vec::new(),
            insert: Vec::new(),
            remove_packed: Vec::with_capacity(n),
            insert_packed: Vec::with_capacity(n),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.insert.is_empty()
            && self.remove_packed.is_empty()
            && self.insert_packed.is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct OrderedIndex {
    entries: Entries,
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

/// One of two iterators of the same items.
enum Either<A, B> {
    A(A),
    B(B),
}

impl<A: Iterator, B: Iterator<Item = A::Item>> Iterator for Either<A, B> {
    type Item = A::Item;

    fn next(&mut self) -> Option<A::Item> {
        match self {
            Either::A(a) => a.next(),
            Either::B(b) => b.next(),
        }
    }
}

impl<A: DoubleEndedIterator, B: DoubleEndedIterator<Item = A::Item>> DoubleEndedIterator for Either<A, B> {
    fn next_back(&mut self) -> Option<A::Item> {
        match self {
            Either::A(a) => a.next_back(),
            Either::B(b) => b.next_back(),
        }
    }
}

/// Which entries a packed set's position search passes over: those below a lower bound, or
/// not above an upper one (keys compared as [`Key`]s, so a bound of any kind works).
fn packed_before(b: Bound<&Key>, upper: bool) -> impl Fn(&Packed) -> bool + use<> {
    let b = b.map(Key::clone);
    move |e: &Packed| match &b {
        Bound::Unbounded => upper,
        Bound::Included(k) if upper => e.key() <= *k,
        Bound::Included(k) => e.key() < *k,
        Bound::Excluded(k) if upper => e.key() < *k,
        Bound::Excluded(k) => e.key() <= *k,
    }
}

/// A bound on entries of the general form.
type EntryBound = Bound<(Key, u32)>;

/// A range's bounds as entries of the general form.
fn key_bounds(lo: Bound<&Key>, hi: Bound<&Key>) -> (EntryBound, EntryBound) {
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
    (lo, hi)
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

    /// Converts the packed form to the general one (a key that does not pack arrived).
    fn widen(&mut self) -> &mut ChunkedSet<(Key, u32)> {
        if let Entries::Packed(p) = &self.entries {
            self.entries = Entries::Keys(ChunkedSet::from_sorted(p.iter().map(|p| p.unpack())));
        }
        match &mut self.entries {
            Entries::Keys(k) => k,
            Entries::Packed(_) => unreachable!("widened above"),
        }
    }

    pub fn insert(&mut self, slot: u32, v: Option<Value<'_>>) {
        if !is_regular(v) {
            self.irregular += 1;
        }
        Self::each(v, |k| match (&mut self.entries, Packed::new(&k, slot)) {
            (Entries::Packed(p), Some(e)) => {
                p.insert(e);
            }
            _ => {
                self.widen().insert((k, slot));
            }
        });
    }

    pub fn remove(&mut self, slot: u32, v: Option<Value<'_>>) {
        if !is_regular(v) {
            self.irregular = self.irregular.saturating_sub(1);
        }
        Self::each(v, |k| match &mut self.entries {
            Entries::Packed(p) => {
                // A key that does not pack is not in a packed index.
                if let Some(e) = Packed::new(&k, slot) {
                    p.remove(&e);
                }
            }
            Entries::Keys(s) => {
                s.remove(&(k, slot));
            }
        });
    }

    /// Like [`insert`](Self::insert), with the entries queued in `batch` (see
    /// [`apply_batch`](Self::apply_batch)).
    pub fn defer_insert(&mut self, slot: u32, v: Option<Value<'_>>, batch: &mut OrderedBatch) {
        if !is_regular(v) {
            self.irregular += 1;
        }
        Self::each(v, |k| match (&self.entries, Packed::new(&k, slot)) {
            (Entries::Packed(_), Some(e)) => batch.insert_packed.push(e),
            _ => {
                self.widen();
                batch.insert.push((k, slot));
            }
        });
    }

    /// Like [`remove`](Self::remove), with the entries queued in `batch`.
    pub fn defer_remove(&mut self, slot: u32, v: Option<Value<'_>>, batch: &mut OrderedBatch) {
        if !is_regular(v) {
            self.irregular = self.irregular.saturating_sub(1);
        }
        Self::each(v, |k| match (&self.entries, Packed::new(&k, slot)) {
            (Entries::Packed(_), Some(e)) => batch.remove_packed.push(e),
            // Not in a packed index, nor queued for it (a queued key that does not pack
            // widens the index).
            (Entries::Packed(_), None) => {}
            (Entries::Keys(_), _) => batch.remove.push((k, slot)),
        });
    }

    /// Applies queued entries: removals, then insertions, each in key order (merged in one
    /// pass when the batch is large against the index). A batch must not remove an entry it
    /// inserts.
    pub fn apply_batch(&mut self, batch: &mut OrderedBatch) {
        let mut remove_packed = std::mem::take(&mut batch.remove_packed);
        let mut insert_packed = std::mem::take(&mut batch.insert_packed);
        match &mut self.entries {
            Entries::Packed(set) => {
                remove_packed.sort_unstable();
                remove_packed.dedup();
                insert_packed.sort_unstable();
                insert_packed.dedup();
                set.apply_sorted(remove_packed, insert_packed);
            }
            Entries::Keys(set) => {
                // Entries queued before the index widened join the general ones.
                let mut remove = std::mem::take(&mut batch.remove);
                let mut insert = std::mem::take(&mut batch.insert);
                remove.extend(remove_packed.into_iter().map(Packed::unpack));
                insert.extend(insert_packed.into_iter().map(Packed::unpack));
                remove.sort_unstable();
                remove.dedup();
                insert.sort_unstable();
                insert.dedup();
                set.apply_sorted(remove, insert);
            }
        }
    }

    /// Whether walking the index gives every record once, in sort order of this field.
    pub fn sortable(&self) -> bool {
        self.irregular == 0
    }

    /// Entries with keys in a range, in order: keys of the packed form are rebuilt (integers
    /// and nulls: no allocation), those of the general form borrowed.
    pub fn range<'a>(
        &'a self,
        lo: Bound<&Key>,
        hi: Bound<&Key>,
    ) -> impl DoubleEndedIterator<Item = (Cow<'a, Key>, u32)> + use<'a> {
        match &self.entries {
            Entries::Packed(set) => Either::A(
                set.range_by(packed_before(lo, false), packed_before(hi, true))
                    .map(|p| (Cow::Owned(p.key()), p.slot())),
            ),
            Entries::Keys(set) => {
                let (lo, hi) = key_bounds(lo, hi);
                Either::B(set.range(lo.as_ref(), hi.as_ref()).map(|(k, s)| (Cow::Borrowed(k), *s)))
            }
        }
    }

    /// The slots of [`range`](Self::range), in order (no key is rebuilt).
    pub fn slots<'a>(&'a self, lo: Bound<&Key>, hi: Bound<&Key>) -> impl Iterator<Item = u32> + use<'a> {
        match &self.entries {
            Entries::Packed(set) => {
                Either::A(set.range_by(packed_before(lo, false), packed_before(hi, true)).map(|p| p.slot()))
            }
            Entries::Keys(set) => {
                let (lo, hi) = key_bounds(lo, hi);
                Either::B(set.range(lo.as_ref(), hi.as_ref()).map(|(_, s)| *s))
            }
        }
    }

    /// How many entries [`range`](Self::range) gives, counted up to `cap` without visiting
    /// them.
    pub fn count(&self, lo: Bound<&Key>, hi: Bound<&Key>, cap: usize) -> usize {
        match &self.entries {
            Entries::Packed(set) => set.count_by(packed_before(lo, false), packed_before(hi, true), cap),
            Entries::Keys(set) => {
                let (lo, hi) = key_bounds(lo, hi);
                set.count(lo.as_ref(), hi.as_ref(), cap)
            }
        }
    }

    pub fn heap_size(&self) -> usize {
        match &self.entries {
            Entries::Packed(set) => set.heap_size(),
            Entries::Keys(set) => set.heap_size() + set.iter().map(|(k, _)| k.heap_size()).sum::<usize>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::chunked::tests::rng;
    use super::*;

    /// A key of the kinds that pack (mostly), and now and then one that does not.
    fn key(r: &mut impl FnMut(u64) -> u64, widen: bool) -> Key {
        match r(if widen { 12 } else { 10 }) {
            0 => Key::Null,
            1 => Key::Int(i64::MIN + r(3) as i64),
            2 => Key::Int(i64::MAX - r(3) as i64),
            10 => Key::Str(format!("s{}", r(5)).into()),
            11 => Key::Float(r(40) as f64 - 19.5),
            _ => Key::Int(r(40) as i64 - 20),
        }
    }

    fn value(k: &Key) -> Option<Value<'_>> {
        match k {
            Key::Null => None,
            k => Some(k.as_value()),
        }
    }

    fn bounds(r: &mut impl FnMut(u64) -> u64, widen: bool) -> (Bound<Key>, Bound<Key>) {
        let b = |r: &mut dyn FnMut(u64) -> u64| {
            let wide = widen || r(4) == 0;
            let k = key(&mut |n| r(n), wide);
            match r(3) {
                0 => Bound::Unbounded,
                1 => Bound::Included(k),
                _ => Bound::Excluded(k),
            }
        };
        (b(r), b(r))
    }

    fn model_range(m: &BTreeSet<(Key, u32)>, lo: Bound<&Key>, hi: Bound<&Key>) -> Vec<(Key, u32)> {
        m.iter()
            .filter(|(k, _)| match lo {
                Bound::Unbounded => true,
                Bound::Included(x) => k >= x,
                Bound::Excluded(x) => k > x,
            })
            .filter(|(k, _)| match hi {
                Bound::Unbounded => true,
                Bound::Included(x) => k <= x,
                Bound::Excluded(x) => k < x,
            })
            .cloned()
            .collect()
    }

    #[test]
    fn packed_and_widened_forms_behave_as_a_set_of_keys() {
        let mut widened = 0;
        for seed in 1..60u64 {
            let mut r = rng(seed * 104_729);
            let mut index = OrderedIndex::default();
            let mut model: BTreeSet<(Key, u32)> = BTreeSet::new();
            // Which key each slot holds.
            let mut held: Vec<Option<Key>> = vec![None; 40];
            // Some seeds widen half-way; others stay packed throughout.
            let widens_at = if seed % 2 == 0 { 15 } else { usize::MAX };
            for round in 0..30 {
                let widen = round >= widens_at;
                let batched = r(2) == 0;
                let mut batch = OrderedBatch::with_capacity(8);
                let mut changed = BTreeSet::new();
                for _ in 0..r(25) {
                    let slot = r(40) as u32;
                    // A batch changes each slot once (as a commit's distinct records do).
                    if batched && !changed.insert(slot) {
                        continue;
                    }
                    if let Some(old) = held[slot as usize].take() {
                        model.remove(&(old.clone(), slot));
                        if batched {
                            index.defer_remove(slot, value(&old), &mut batch);
                        } else {
                            index.remove(slot, value(&old));
                        }
                    }
                    if r(4) != 0 {
                        let k = key(&mut r, widen);
                        model.insert((k.clone(), slot));
                        if batched {
                            index.defer_insert(slot, value(&k), &mut batch);
                        } else {
                            index.insert(slot, value(&k));
                        }
                        held[slot as usize] = Some(k);
                    }
                }
                index.apply_batch(&mut batch);
                let all: Vec<(Key, u32)> =
                    index.range(Bound::Unbounded, Bound::Unbounded).map(|(k, s)| (k.into_owned(), s)).collect();
                assert_eq!(all, model.iter().cloned().collect::<Vec<_>>(), "seed {seed} round {round}");
                // Integers and nulls only, so far: still packed.
                if !widen {
                    assert!(matches!(index.entries, Entries::Packed(_)));
                }
                for _ in 0..10 {
                    let (lo, hi) = bounds(&mut r, widen);
                    let got: Vec<(Key, u32)> =
                        index.range(lo.as_ref(), hi.as_ref()).map(|(k, s)| (k.into_owned(), s)).collect();
                    assert_eq!(got, model_range(&model, lo.as_ref(), hi.as_ref()), "{lo:?}..{hi:?}");
                    let slots: Vec<u32> = index.slots(lo.as_ref(), hi.as_ref()).collect();
                    assert!(slots.iter().eq(got.iter().map(|(_, s)| s)));
                    let cap = r(40) as usize;
                    assert_eq!(
                        index.count(lo.as_ref(), hi.as_ref(), cap),
                        got.len().min(cap),
                        "{lo:?}..{hi:?} cap {cap}"
                    );
                    let back: Vec<(Key, u32)> =
                        index.range(lo.as_ref(), hi.as_ref()).rev().map(|(k, s)| (k.into_owned(), s)).collect();
                    assert_eq!(back.len(), got.len());
                    assert!(back.iter().rev().eq(got.iter()));
                }
            }
            widened += usize::from(matches!(index.entries, Entries::Keys(_)));
        }
        assert!(widened >= 20, "only {widened} seeds widened");
    }
}
