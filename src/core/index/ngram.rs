//! The substring index: character trigrams → slots. A needle of three or more chars is found
//! by intersecting its trigrams' lists: a superset, re-checked against the records.

use std::collections::HashMap;

use super::{each_scalar, postings_size, sorted_insert, sorted_remove};
use crate::core::value::Value;

#[derive(Debug, Default)]
pub(crate) struct NgramIndex {
    postings: HashMap<u64, Vec<u32>>,
}

/// Packs three chars (21 bits each) into one key.
fn gram(c: &[char]) -> u64 {
    (u64::from(c[0]) << 42) | (u64::from(c[1]) << 21) | u64::from(c[2])
}

/// The distinct trigrams of a string.
pub(crate) fn grams(s: &str) -> Vec<u64> {
    let chars: Vec<char> = s.chars().collect();
    let mut out: Vec<u64> = chars.windows(3).map(gram).collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn grams_of(v: Option<Value<'_>>) -> Vec<u64> {
    let mut out = Vec::new();
    if let Some(v) = v {
        each_scalar(v, &mut |s| {
            if let Value::Str(s) = s {
                out.extend(grams(s));
            }
        });
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl NgramIndex {
    pub fn insert(&mut self, slot: u32, v: Option<Value<'_>>) {
        for g in grams_of(v) {
            sorted_insert(self.postings.entry(g).or_default(), slot);
        }
    }

    pub fn remove(&mut self, slot: u32, v: Option<Value<'_>>) {
        for g in grams_of(v) {
            if let Some(list) = self.postings.get_mut(&g) {
                sorted_remove(list, slot);
                if list.is_empty() {
                    self.postings.remove(&g);
                }
            }
        }
    }

    /// Slots that may contain `needle` (a superset), sorted; `None` when the needle is too
    /// short for trigrams to help.
    pub fn candidates(&self, needle: &str) -> Option<Vec<u32>> {
        let gs = grams(needle);
        if gs.is_empty() {
            return None;
        }
        let mut lists: Vec<&[u32]> = gs.iter().map(|g| self.postings.get(g).map_or(&[][..], Vec::as_slice)).collect();
        lists.sort_by_key(|l| l.len());
        let mut acc = lists[0].to_vec();
        for l in &lists[1..] {
            if acc.is_empty() {
                break;
            }
            acc = super::super::planner::intersect(&acc, l);
        }
        Some(acc)
    }

    /// The slot-ordered lists of `needle`'s trigrams (their intersection holds every slot that
    /// may contain it); `None` when the needle is too short.
    pub fn lists(&self, needle: &str) -> Option<Vec<&[u32]>> {
        let gs = grams(needle);
        if gs.is_empty() {
            return None;
        }
        Some(gs.iter().map(|g| self.postings.get(g).map_or(&[][..], Vec::as_slice)).collect())
    }

    /// The size of the smallest trigram list of `needle` (for cost estimates).
    pub fn estimate(&self, needle: &str) -> Option<usize> {
        grams(needle).iter().map(|g| self.postings.get(g).map_or(0, Vec::len)).min()
    }

    pub fn heap_size(&self) -> usize {
        self.postings.capacity() * (8 + size_of::<Vec<u32>>() + 8) + postings_size(self.postings.values())
    }
}
