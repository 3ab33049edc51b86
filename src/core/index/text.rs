//! The text index: token → slots, plus the vocabulary bucketed by length for fuzzy lookups.

use std::collections::{BTreeSet, HashMap};

use super::{each_scalar, postings_size, sorted_insert, sorted_remove};
use crate::core::query::{levenshtein_within, tokenize};
use crate::core::value::Value;

#[derive(Debug, Default)]
pub(crate) struct TextIndex {
    postings: HashMap<Box<str>, Vec<u32>>,
    /// Distinct tokens by their length in chars.
    by_len: Vec<BTreeSet<Box<[char]>>>,
}

fn tokens_of(v: Option<Value<'_>>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = v {
        each_scalar(v, &mut |s| {
            if let Value::Str(s) = s {
                out.extend(tokenize(s));
            }
        });
    }
    out.sort();
    out.dedup();
    out
}

impl TextIndex {
    pub fn insert(&mut self, slot: u32, v: Option<Value<'_>>) {
        for t in tokens_of(v) {
            let list = match self.postings.get_mut(t.as_str()) {
                Some(l) => l,
                None => {
                    let chars: Box<[char]> = t.chars().collect();
                    if self.by_len.len() <= chars.len() {
                        self.by_len.resize_with(chars.len() + 1, BTreeSet::new);
                    }
                    self.by_len[chars.len()].insert(chars);
                    self.postings.entry(t.into_boxed_str()).or_default()
                }
            };
            sorted_insert(list, slot);
        }
    }

    pub fn remove(&mut self, slot: u32, v: Option<Value<'_>>) {
        for t in tokens_of(v) {
            if let Some(list) = self.postings.get_mut(t.as_str()) {
                sorted_remove(list, slot);
                if list.is_empty() {
                    self.postings.remove(t.as_str());
                    let chars: Box<[char]> = t.chars().collect();
                    if let Some(set) = self.by_len.get_mut(chars.len()) {
                        set.remove(&chars);
                    }
                }
            }
        }
    }

    /// Slots holding every token (each within `distance` edits), sorted. Exact.
    pub fn lookup(&self, tokens: &[Box<[char]>], distance: u8) -> Vec<u32> {
        let mut acc: Option<Vec<u32>> = None;
        for q in tokens {
            let mut hits = if distance == 0 {
                let s: String = q.iter().collect();
                self.postings.get(s.as_str()).cloned().unwrap_or_default()
            } else {
                self.fuzzy(q, usize::from(distance))
            };
            if let Some(a) = acc {
                hits = super::super::planner::intersect(&a, &hits);
            }
            if hits.is_empty() {
                return hits;
            }
            acc = Some(hits);
        }
        acc.unwrap_or_default()
    }

    /// Slots holding any token within `d` edits of `q`, sorted.
    fn fuzzy(&self, q: &[char], d: usize) -> Vec<u32> {
        let lo = q.len().saturating_sub(d);
        let hi = (q.len() + d).min(self.by_len.len().saturating_sub(1));
        let mut out = Vec::new();
        for len in lo..=hi {
            for t in self.by_len.get(len).into_iter().flatten() {
                if levenshtein_within(q, t, d) {
                    let s: String = t.iter().collect();
                    if let Some(l) = self.postings.get(s.as_str()) {
                        out.extend_from_slice(l);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The slot-ordered lists of exact tokens (their intersection is exactly the `match`).
    pub fn lists(&self, tokens: &[Box<[char]>]) -> Vec<&[u32]> {
        tokens
            .iter()
            .map(|q| {
                let s: String = q.iter().collect();
                self.postings.get(s.as_str()).map_or(&[][..], Vec::as_slice)
            })
            .collect()
    }

    /// The number of slots holding a token exactly (for cost estimates).
    pub fn count(&self, token: &[char]) -> usize {
        let s: String = token.iter().collect();
        self.postings.get(s.as_str()).map_or(0, Vec::len)
    }

    pub fn heap_size(&self) -> usize {
        let vocab: usize = self.by_len.iter().enumerate().map(|(len, set)| set.len() * (len * 4 + 16 + 16)).sum();
        self.postings.capacity() * (16 + size_of::<Vec<u32>>() + 8)
            + self.postings.keys().map(|k| k.len()).sum::<usize>()
            + postings_size(self.postings.values())
            + vocab
    }
}
