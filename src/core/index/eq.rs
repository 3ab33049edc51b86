//! The equality index: a hash map from value to the slots holding it, each list in id order
//! so that `eq … limit n` with no sort reads just the first `n`.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::{keys_of, postings_size};
use crate::core::value::{Key, Value};

#[derive(Debug, Default)]
pub(crate) struct EqIndex {
    map: HashMap<Key, Vec<u32>>,
}

impl EqIndex {
    pub fn insert(&mut self, slot: u32, v: Option<Value<'_>>, by_id: &impl Fn(u32, u32) -> Ordering) {
        for k in keys_of(v) {
            let list = self.map.entry(k).or_default();
            // Bulk loads in id order append; otherwise binary search by id.
            if list.last().is_none_or(|&l| by_id(l, slot) == Ordering::Less) {
                list.push(slot);
            } else if let Err(at) = list.binary_search_by(|&s| by_id(s, slot)) {
                list.insert(at, slot);
            }
        }
    }

    pub fn remove(&mut self, slot: u32, v: Option<Value<'_>>, by_id: &impl Fn(u32, u32) -> Ordering) {
        for k in keys_of(v) {
            if let Some(list) = self.map.get_mut(&k) {
                if let Ok(at) = list.binary_search_by(|&s| by_id(s, slot)) {
                    list.remove(at);
                }
                if list.is_empty() {
                    self.map.remove(&k);
                }
            }
        }
    }

    /// The slots whose field equals `key`, in id order.
    pub fn get(&self, key: &Key) -> &[u32] {
        self.map.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn heap_size(&self) -> usize {
        self.map.capacity() * (size_of::<Key>() + size_of::<Vec<u32>>() + 8)
            + self.map.keys().map(Key::heap_size).sum::<usize>()
            + postings_size(self.map.values())
    }
}
