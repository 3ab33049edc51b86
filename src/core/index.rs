//! Secondary indexes over one field each: equality (hash), ordered (B-tree), text (tokens,
//! fuzzy) and substring (trigrams). They hold record slots, not records, and are updated
//! incrementally from a commit's changed records.

use std::cmp::Ordering;

use crate::core::fields::Fields;
use crate::core::value::{Key, Value};

mod chunked;
mod eq;
mod ngram;
mod ordered;
mod text;

pub(crate) use eq::EqIndex;
pub(crate) use ngram::NgramIndex;
pub(crate) use ordered::{OrderedBatch, OrderedIndex};
pub(crate) use text::TextIndex;

/// The kinds of index a field can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IndexKind {
    /// Hash of values: `eq`, `in`, `isNull`; no sort needed, postings in id order.
    Eq,
    /// B-tree of values: ranges, `startsWith`, sorting (numbers, dates, strings).
    Ordered,
    /// Tokens of text: `text` in `match` and `fuzzy` modes.
    Text,
    /// Character trigrams: `contains`, `startsWith`, `endsWith`.
    Substring,
}

/// An index to build: a field (or dotted path) and a kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IndexSpec {
    /// Field name or dotted path.
    pub field: String,
    /// The kind.
    pub kind: IndexKind,
}

impl IndexSpec {
    /// An equality index.
    pub fn eq(field: impl Into<String>) -> Self {
        Self { field: field.into(), kind: IndexKind::Eq }
    }
    /// An ordered index.
    pub fn ordered(field: impl Into<String>) -> Self {
        Self { field: field.into(), kind: IndexKind::Ordered }
    }
    /// A text index.
    pub fn text(field: impl Into<String>) -> Self {
        Self { field: field.into(), kind: IndexKind::Text }
    }
    /// A substring (trigram) index.
    pub fn substring(field: impl Into<String>) -> Self {
        Self { field: field.into(), kind: IndexKind::Substring }
    }
}

/// One built index.
#[derive(Debug)]
pub(crate) struct FieldIndex {
    pub spec: IndexSpec,
    pub data: IndexData,
}

#[derive(Debug)]
pub(crate) enum IndexData {
    Eq(EqIndex),
    Ordered(OrderedIndex),
    Text(TextIndex),
    Substring(NgramIndex),
}

impl FieldIndex {
    pub fn new(spec: IndexSpec) -> Self {
        let data = match spec.kind {
            IndexKind::Eq => IndexData::Eq(EqIndex::default()),
            IndexKind::Ordered => IndexData::Ordered(OrderedIndex::default()),
            IndexKind::Text => IndexData::Text(TextIndex::default()),
            IndexKind::Substring => IndexData::Substring(NgramIndex::default()),
        };
        Self { spec, data }
    }

    /// Adds a record in `slot`. `by_id` orders two slots by their records' ids.
    pub fn insert<R: Fields>(&mut self, slot: u32, r: &R, by_id: &impl Fn(u32, u32) -> Ordering) {
        let v = r.path(&self.spec.field);
        match &mut self.data {
            IndexData::Eq(i) => i.insert(slot, v, by_id),
            IndexData::Ordered(i) => i.insert(slot, v),
            IndexData::Text(i) => i.insert(slot, v),
            IndexData::Substring(i) => i.insert(slot, v),
        }
    }

    /// Removes the record in `slot` (as it was when inserted).
    pub fn remove<R: Fields>(&mut self, slot: u32, r: &R, by_id: &impl Fn(u32, u32) -> Ordering) {
        let v = r.path(&self.spec.field);
        match &mut self.data {
            IndexData::Eq(i) => i.remove(slot, v, by_id),
            IndexData::Ordered(i) => i.remove(slot, v),
            IndexData::Text(i) => i.remove(slot, v),
            IndexData::Substring(i) => i.remove(slot, v),
        }
    }

    /// [`insert`](Self::insert), queued in `batch` when this is an ordered index and a batch
    /// is given.
    pub fn insert_in<R: Fields>(
        &mut self,
        slot: u32,
        r: &R,
        by_id: &impl Fn(u32, u32) -> Ordering,
        batch: Option<&mut OrderedBatch>,
    ) {
        match (&mut self.data, batch) {
            (IndexData::Ordered(i), Some(b)) => i.defer_insert(slot, r.path(&self.spec.field), b),
            _ => self.insert(slot, r, by_id),
        }
    }

    /// [`remove`](Self::remove), queued in `batch` when this is an ordered index and a batch
    /// is given.
    pub fn remove_in<R: Fields>(
        &mut self,
        slot: u32,
        r: &R,
        by_id: &impl Fn(u32, u32) -> Ordering,
        batch: Option<&mut OrderedBatch>,
    ) {
        match (&mut self.data, batch) {
            (IndexData::Ordered(i), Some(b)) => i.defer_remove(slot, r.path(&self.spec.field), b),
            _ => self.remove(slot, r, by_id),
        }
    }

    /// Applies what was queued in `batch`.
    pub fn apply_batch(&mut self, batch: &mut OrderedBatch) {
        if let IndexData::Ordered(i) = &mut self.data {
            i.apply_batch(batch);
        }
    }

    /// Whether this index takes queued entries.
    pub fn batches(&self) -> bool {
        matches!(self.data, IndexData::Ordered(_))
    }

    /// Whether the indexed field differs between two versions of a record.
    pub fn changed<R: Fields>(&self, old: &R, new: &R) -> bool {
        !same(old.path(&self.spec.field), new.path(&self.spec.field))
    }

    /// Approximate bytes held.
    pub fn heap_size(&self) -> usize {
        match &self.data {
            IndexData::Eq(i) => i.heap_size(),
            IndexData::Ordered(i) => i.heap_size(),
            IndexData::Text(i) => i.heap_size(),
            IndexData::Substring(i) => i.heap_size(),
        }
    }
}

/// Structural equality of two field values (absent differs from null).
fn same(a: Option<Value<'_>>, b: Option<Value<'_>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::Object(_)), Some(Value::Object(_))) => false,
        (Some(a), Some(b)) => {
            std::mem::discriminant(&a) == std::mem::discriminant(&b) && a.total_cmp(&b) == Ordering::Equal
        }
        _ => false,
    }
}

/// Calls `f` on each scalar of a value, descending into lists (a list field is indexed by
/// its elements, as filters match any element).
pub(crate) fn each_scalar<'a>(v: Value<'a>, f: &mut impl FnMut(Value<'a>)) {
    match v {
        Value::List(l) => {
            for i in 0..l.len() {
                each_scalar(l.at(i), f);
            }
        }
        Value::Object(_) => {}
        v => f(v),
    }
}

/// The distinct keys of a field value, as the equality and ordered indexes see them.
pub(crate) fn keys_of(v: Option<Value<'_>>) -> Vec<Key> {
    let mut out = Vec::new();
    match v {
        None => out.push(Key::Null),
        Some(v) => each_scalar(v, &mut |s| out.push(s.to_key())),
    }
    if out.len() > 1 {
        out.sort();
        out.dedup();
    }
    out
}

/// A sorted list of slots: insert and remove keep it sorted and distinct.
pub(crate) fn sorted_insert(list: &mut Vec<u32>, slot: u32) {
    if list.last().is_none_or(|&l| l < slot) {
        list.push(slot);
    } else if let Err(at) = list.binary_search(&slot) {
        list.insert(at, slot);
    }
}

pub(crate) fn sorted_remove(list: &mut Vec<u32>, slot: u32) {
    if let Ok(at) = list.binary_search(&slot) {
        list.remove(at);
    }
}

/// Heap bytes of a posting map's vectors.
pub(crate) fn postings_size<'a>(lists: impl Iterator<Item = &'a Vec<u32>>) -> usize {
    lists.map(|l| l.capacity() * 4 + size_of::<Vec<u32>>()).sum()
}
