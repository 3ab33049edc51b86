//! A sorted set kept as a list of sorted chunks: the storage of the ordered index.
//!
//! Against a B-tree it trades a little on single inserts for two things the ordered index
//! needs: a large commit applies its sorted entries in one merging pass (linear in the set,
//! with sequential memory access), and ranges walk contiguous slices.

use std::ops::Bound;

/// Chunks split above this many entries. Debug builds (the tests) use tiny chunks, so that
/// every path over chunk edges is exercised by small tables.
const MAX: usize = if cfg!(debug_assertions) { 8 } else { 512 };
/// Entries per chunk when a merge rebuilds the set (room to grow before a split).
const FILL: usize = MAX / 2;
/// A chunk this small merges into its neighbour.
const MIN: usize = MAX / 8;

/// A sorted set of distinct entries in chunks, none of them empty.
#[derive(Debug)]
pub(crate) struct ChunkedSet<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedSet<T> {
    fn default() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }
}

/// A position: (chunk, offset in it).
type Pos = (usize, usize);

impl<T: Ord> ChunkedSet<T> {
    /// Bytes allocated for the entries (their own heap data excluded).
    pub fn heap_size(&self) -> usize {
        self.chunks.capacity() * size_of::<Vec<T>>()
            + self.chunks.iter().map(|c| c.capacity() * size_of::<T>()).sum::<usize>()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The chunk where `e` belongs: the last whose first entry is ≤ `e` (or the first).
    fn chunk_for(&self, e: &T) -> usize {
        self.chunks.partition_point(|c| c.first().is_some_and(|f| f <= e)).saturating_sub(1)
    }

    /// Inserts `e`; `false` if it was there.
    pub fn insert(&mut self, e: T) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push(vec![e]);
            self.len = 1;
            return true;
        }
        let ci = self.chunk_for(&e);
        let c = &mut self.chunks[ci];
        let Err(at) = c.binary_search(&e) else { return false };
        c.insert(at, e);
        self.len += 1;
        if c.len() > MAX {
            let tail = c.split_off(c.len() / 2);
            self.chunks.insert(ci + 1, tail);
        }
        true
    }

    /// Removes `e`; `false` if it was not there.
    pub fn remove(&mut self, e: &T) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let ci = self.chunk_for(e);
        let c = &mut self.chunks[ci];
        let Ok(at) = c.binary_search(e) else { return false };
        c.remove(at);
        let left = c.len();
        self.len -= 1;
        if left == 0 {
            self.chunks.remove(ci);
        } else if left < MIN && self.chunks.get(ci + 1).is_some_and(|n| left + n.len() <= MAX) {
            let next = self.chunks.remove(ci + 1);
            self.chunks[ci].extend(next);
        }
        true
    }

    /// Removes every entry of `remove` and inserts every entry of `insert` (both sorted).
    /// A batch that is large against the set rebuilds it in one merging pass, reusing the
    /// chunks' buffers.
    pub fn apply_sorted(&mut self, remove: Vec<T>, insert: Vec<T>) {
        let k = remove.len() + insert.len();
        if k * 16 < self.len {
            for e in &remove {
                self.remove(e);
            }
            for e in insert {
                self.insert(e);
            }
            return;
        }
        let old = std::mem::take(&mut self.chunks);
        let mut out = Merged::new((self.len + insert.len()) / FILL + 1);
        let mut rem = remove.iter().peekable();
        let mut ins = insert.into_iter().peekable();
        for mut chunk in old {
            for e in chunk.drain(..) {
                // Fast path: below both queues' heads, `e` stays as it is.
                let below_ins = ins.peek().is_none_or(|i| e < *i);
                if below_ins && rem.peek().is_none_or(|r| e < **r) {
                    out.push(e);
                    continue;
                }
                // Insertions before `e`; one equal to `e` keeps it even if it is removed
                // (removals come first).
                let mut again = false;
                while let Some(i) = ins.next_if(|i| *i <= e) {
                    if i < e {
                        out.push(i);
                    } else {
                        again = true;
                    }
                }
                while rem.next_if(|r| **r < e).is_some() {}
                let removed = rem.next_if(|r| **r == e).is_some();
                if !removed || again {
                    out.push(e);
                }
            }
            out.spare(chunk);
        }
        for i in ins {
            out.push(i);
        }
        let (chunks, len) = out.finish();
        self.chunks = chunks;
        self.len = len;
    }

    /// The first position whose entry is not below `lo`.
    fn start(&self, lo: Bound<&T>) -> Pos {
        let (x, strict) = match lo {
            Bound::Unbounded => return (0, 0),
            Bound::Included(x) => (x, false),
            Bound::Excluded(x) => (x, true),
        };
        self.first_where_not(|e| if strict { e <= x } else { e < x })
    }

    /// The first position whose entry is above `hi`.
    fn end(&self, hi: Bound<&T>) -> Pos {
        let (x, inclusive) = match hi {
            Bound::Unbounded => return (self.chunks.len(), 0),
            Bound::Included(x) => (x, true),
            Bound::Excluded(x) => (x, false),
        };
        self.first_where_not(|e| if inclusive { e <= x } else { e < x })
    }

    /// The first position whose entry fails `before` (which holds for a prefix of the set).
    fn first_where_not(&self, before: impl Fn(&T) -> bool) -> Pos {
        let ci = self.chunks.partition_point(|c| c.last().is_some_and(&before));
        match self.chunks.get(ci) {
            Some(c) => (ci, c.partition_point(&before)),
            None => (self.chunks.len(), 0),
        }
    }

    /// The entries within the bounds, in order (none when the bounds cross).
    pub fn range<'a>(&'a self, lo: Bound<&T>, hi: Bound<&T>) -> impl DoubleEndedIterator<Item = &'a T> + use<'a, T> {
        self.between(self.start(lo), self.end(hi))
    }

    /// The entries from the first that fails `lo_before` to the first that fails
    /// `hi_before`, in order (both hold for prefixes of the set; none when they cross).
    pub fn range_by(
        &self,
        lo_before: impl Fn(&T) -> bool,
        hi_before: impl Fn(&T) -> bool,
    ) -> impl DoubleEndedIterator<Item = &T> {
        self.between(self.first_where_not(lo_before), self.first_where_not(hi_before))
    }

    /// How many entries [`range`](Self::range) gives, counted up to `cap` (from the chunks'
    /// lengths: no entry is visited).
    pub fn count(&self, lo: Bound<&T>, hi: Bound<&T>, cap: usize) -> usize {
        self.count_between(self.start(lo), self.end(hi), cap)
    }

    /// How many entries [`range_by`](Self::range_by) gives, counted up to `cap`.
    pub fn count_by(&self, lo_before: impl Fn(&T) -> bool, hi_before: impl Fn(&T) -> bool, cap: usize) -> usize {
        self.count_between(self.first_where_not(lo_before), self.first_where_not(hi_before), cap)
    }

    fn count_between(&self, s: Pos, e: Pos, cap: usize) -> usize {
        if s >= e {
            return 0;
        }
        if s.0 == e.0 {
            return (e.1 - s.1).min(cap);
        }
        let mut n = self.chunks[s.0].len() - s.1;
        for c in &self.chunks[s.0 + 1..e.0] {
            if n >= cap {
                break;
            }
            n += c.len();
        }
        (n + e.1).min(cap)
    }

    fn between<'a>(&'a self, s: Pos, e: Pos) -> impl DoubleEndedIterator<Item = &'a T> + use<'a, T> {
        let (s, e) = if s < e { (s, e) } else { ((0, 0), (0, 0)) };
        let last = if e.1 == 0 { e.0 } else { e.0 + 1 };
        (s.0..last.min(self.chunks.len())).flat_map(move |k| {
            let c = &self.chunks[k];
            let from = if k == s.0 { s.1 } else { 0 };
            let to = if k == e.0 { e.1 } else { c.len() };
            c[from.min(to)..to].iter()
        })
    }

    /// A set of entries given in order, without duplicates.
    pub fn from_sorted(entries: impl IntoIterator<Item = T>) -> Self {
        let mut out = Merged::new(0);
        for e in entries {
            out.push(e);
        }
        let (chunks, len) = out.finish();
        Self { chunks, len }
    }
}

/// Collects sorted entries (a merge's output) into chunks of [`FILL`], in buffers the input
/// chunks left when there are any.
struct Merged<T> {
    chunks: Vec<Vec<T>>,
    cur: Vec<T>,
    spare: Vec<Vec<T>>,
    len: usize,
}

impl<T> Merged<T> {
    fn new(chunks: usize) -> Self {
        Self { chunks: Vec::with_capacity(chunks), cur: Vec::with_capacity(FILL), spare: Vec::new(), len: 0 }
    }

    #[inline]
    fn push(&mut self, e: T) {
        if self.cur.len() == FILL {
            let mut next = self.spare.pop().unwrap_or_default();
            next.reserve(FILL);
            self.len += FILL;
            self.chunks.push(std::mem::replace(&mut self.cur, next));
        }
        self.cur.push(e);
    }

    /// An emptied input chunk: its buffer takes later output.
    fn spare(&mut self, chunk: Vec<T>) {
        if chunk.capacity() >= FILL {
            self.spare.push(chunk);
        }
    }

    fn finish(mut self) -> (Vec<Vec<T>>, usize) {
        if !self.cur.is_empty() {
            self.len += self.cur.len();
            self.chunks.push(self.cur);
        }
        (self.chunks, self.len)
    }
}

#[cfg(test)]
pub(in crate::core::index) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A small deterministic generator.
    pub(in crate::core::index) fn rng(mut x: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }

    fn check(a: &ChunkedSet<(u32, u32)>, b: &BTreeSet<(u32, u32)>, r: &mut impl FnMut(u64) -> u64) {
        assert_eq!(a.len, b.len());
        assert!(a.iter().eq(b.iter()));
        assert!(a.chunks.iter().all(|c| !c.is_empty()));
        for _ in 0..20 {
            let bound = |r: &mut dyn FnMut(u64) -> u64, x: (u32, u32)| match r(3) {
                0 => Bound::Unbounded,
                1 => Bound::Included(x),
                _ => Bound::Excluded(x),
            };
            let x = (r(60) as u32, r(4) as u32);
            let y = (r(60) as u32, r(4) as u32);
            let (lo, hi) = (bound(r, x), bound(r, y));
            let (lo_r, hi_r) = (lo.as_ref(), hi.as_ref());
            let want: Vec<_> = if x > y || (x == y && !matches!((lo, hi), (Bound::Included(_), Bound::Included(_)))) {
                // BTreeSet panics on crossed bounds; they hold nothing.
                b.iter().filter(|e| lo_r_contains(lo_r, hi_r, e)).collect()
            } else {
                b.range((lo, hi)).collect()
            };
            assert_eq!(a.range(lo_r, hi_r).collect::<Vec<_>>(), want, "{lo:?}..{hi:?}");
            let cap = r(50) as usize;
            assert_eq!(a.count(lo_r, hi_r, cap), want.len().min(cap), "{lo:?}..{hi:?} cap {cap}");
            assert_eq!(a.range(lo_r, hi_r).rev().collect::<Vec<_>>(), want.into_iter().rev().collect::<Vec<_>>());
        }
    }

    fn lo_r_contains(lo: Bound<&(u32, u32)>, hi: Bound<&(u32, u32)>, e: &(u32, u32)) -> bool {
        let above = match lo {
            Bound::Unbounded => true,
            Bound::Included(x) => e >= x,
            Bound::Excluded(x) => e > x,
        };
        let below = match hi {
            Bound::Unbounded => true,
            Bound::Included(x) => e <= x,
            Bound::Excluded(x) => e < x,
        };
        above && below
    }

    #[test]
    fn behaves_as_a_btree_set_under_single_and_batched_changes() {
        for seed in 1..40u64 {
            let mut r = rng(seed * 7919);
            let mut a = ChunkedSet::default();
            let mut b = BTreeSet::new();
            for _ in 0..30 {
                if r(3) == 0 {
                    // A batch (sorted, distinct, as the index gives them).
                    let n = r(80) as usize;
                    let mut rem: Vec<(u32, u32)> = b.iter().copied().filter(|_| r(3) == 0).take(n).collect();
                    rem.extend((0..r(5)).map(|_| (r(60) as u32, r(4) as u32)));
                    let mut ins: Vec<(u32, u32)> = (0..n).map(|_| (r(60) as u32, r(4) as u32)).collect();
                    // Some entries are removed and inserted again in one batch.
                    ins.extend(rem.iter().copied().filter(|_| r(4) == 0));
                    rem.sort();
                    rem.dedup();
                    ins.sort();
                    ins.dedup();
                    for e in &rem {
                        b.remove(e);
                    }
                    for e in &ins {
                        b.insert(*e);
                    }
                    a.apply_sorted(rem, ins);
                } else {
                    for _ in 0..r(20) {
                        let e = (r(60) as u32, r(4) as u32);
                        if r(2) == 0 {
                            assert_eq!(a.insert(e), b.insert(e));
                        } else {
                            assert_eq!(a.remove(&e), b.remove(&e));
                        }
                    }
                }
                check(&a, &b, &mut r);
            }
        }
    }
}
