//! The query planner and executor.
//!
//! Two access paths, chosen by cost:
//!
//! - **Candidates**: each indexed leaf of the filter yields a set of slots, exact or a superset;
//!   `and` intersects (smallest first, skipping sets far larger than the smallest), `or`
//!   unions when every branch is indexed. Supersets are re-checked against the records; with
//!   no usable index the whole table is scanned. The page is then cut by top-K selection.
//! - **Walk**: when a page is small and the matches many, records are visited in final order
//!   — along the ordered index of the first sort key, or along an id-ordered equality posting
//!   when there is no sort — checking the filter until the page is full. A walk has a budget;
//!   if the filter turns out rare it gives up and the candidates path runs instead.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::str::FromStr;

use crate::core::fields::Keyed;
use crate::core::index::{FieldIndex, IndexData, IndexKind, IndexSpec};
use crate::core::query::eval::{CmpOp, cmp_to_pos};
use crate::core::query::{
    Compiled, CursorError, CursorPos, PageInfo, PageSpec, Pred, QueryError, SortKey, cmp_records, encode_cursor,
};
use crate::core::table::{Entry, Table};
use crate::core::value::Key;

/// Estimates are counted up to this many entries; above it a set counts as "large".
const CAP: usize = 2048;
/// How many entries a walk may visit before it gives up.
const WALK_BUDGET: usize = 16 * CAP;

/// One page of results.
#[derive(Debug)]
pub struct QueryPage<'a, R> {
    /// The records (with versions), in order.
    pub items: Vec<&'a Entry<R>>,
    /// Cursor tokens, `hasNext`, `total`.
    pub page_info: PageInfo,
}

impl<'a, R> QueryPage<'a, R> {
    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = &'a R> + '_ {
        self.items.iter().map(|e| &*e.record)
    }
}

/// How a query was run: which indexes it used and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explain {
    /// The access path.
    pub access: Access,
    /// Each index lookup made, in order.
    pub used: Vec<IndexUse>,
    /// Whether candidates were re-checked against the filter.
    pub recheck: bool,
    /// How many records were visited.
    pub visited: usize,
}

/// The access path of a query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Every record was checked.
    #[default]
    Scan,
    /// Index candidate sets were combined; `exact` if no re-check was needed.
    Candidates {
        /// Candidate count.
        count: usize,
        /// Whether the candidates were exactly the matches.
        exact: bool,
    },
    /// Records were visited in order along an index until the page was full.
    Walk {
        /// The index walked (an ordered index of the first sort field, or an equality
        /// posting in id order).
        index: IndexSpec,
    },
}

/// One index lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexUse {
    /// The field.
    pub field: String,
    /// The index kind, or `None` for the id map.
    pub kind: Option<IndexKind>,
    /// The filter op it served.
    pub op: &'static str,
    /// Whether its answer was exact (else a superset, re-checked).
    pub exact: bool,
}

/// An index, its driving id-ordered list, and the leaf's other lists.
type Walkable<'a> = (&'a FieldIndex, &'a [u32], Vec<&'a [u32]>, bool);

/// A candidate set: slots sorted ascending.
struct Cands {
    slots: Vec<u32>,
    exact: bool,
}

/// Sorted intersection.
pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    if small.len() * 16 < large.len() {
        let mut rest = large;
        for &x in small {
            match rest.binary_search(&x) {
                Ok(i) => {
                    out.push(x);
                    rest = &rest[i + 1..];
                }
                Err(i) => rest = &rest[i..],
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < small.len() && j < large.len() {
        match small[i].cmp(&large[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                out.push(small[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn union_all(mut lists: Vec<Vec<u32>>) -> Vec<u32> {
    if lists.len() == 1 {
        return lists.pop().unwrap_or_default();
    }
    let mut out: Vec<u32> = lists.concat();
    out.sort_unstable();
    out.dedup();
    out
}

fn op_name(p: &Pred) -> &'static str {
    match p {
        Pred::And(_) => "and",
        Pred::Or(_) => "or",
        Pred::Not(_) => "not",
        Pred::Eq { .. } => "eq",
        Pred::In { .. } => "in",
        Pred::Cmp { op: CmpOp::Gt, .. } => "gt",
        Pred::Cmp { op: CmpOp::Gte, .. } => "gte",
        Pred::Cmp { op: CmpOp::Lt, .. } => "lt",
        Pred::Cmp { op: CmpOp::Lte, .. } => "lte",
        Pred::StartsWith { .. } => "startsWith",
        Pred::EndsWith { .. } => "endsWith",
        Pred::Contains { .. } => "contains",
        Pred::IsNull { .. } => "isNull",
        Pred::Exists { .. } => "exists",
        Pred::Text { .. } => "text",
    }
}

/// The key range a comparison covers within its type's band of the total order.
fn cmp_range(op: CmpOp, key: &Key) -> (Bound<Key>, Bound<Key>) {
    let (band_lo, band_hi) = match key {
        Key::Str(_) => (Bound::Included(Key::Str("".into())), Bound::Excluded(Key::List(Box::new([])))),
        _ => (Bound::Excluded(Key::Bool(true)), Bound::Excluded(Key::Str("".into()))),
    };
    match op {
        CmpOp::Gt => (Bound::Excluded(key.clone()), band_hi),
        CmpOp::Gte => (Bound::Included(key.clone()), band_hi),
        CmpOp::Lt => (band_lo, Bound::Excluded(key.clone())),
        CmpOp::Lte => (band_lo, Bound::Included(key.clone())),
    }
}

fn as_ref(b: &Bound<Key>) -> Bound<&Key> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn prefix_upper(prefix: &str) -> Bound<Key> {
    // The smallest string greater than every string with this prefix.
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Bound::Excluded(Key::Str(chars.into_iter().collect::<String>().into()));
        }
    }
    Bound::Excluded(Key::List(Box::new([])))
}

/// An id from a filter key, if it parses as the table's id type.
fn key_to_id<R: Keyed>(key: &Key) -> Option<R::Id> {
    match key {
        Key::Str(s) => R::Id::from_str(s).ok(),
        Key::Int(i) => R::Id::from_str(&i.to_string()).ok(),
        _ => None,
    }
}

impl<R: Keyed> Table<R> {
    fn index(&self, path: &str, kind: IndexKind) -> Option<&FieldIndex> {
        self.indexes.iter().find(|i| i.spec.kind == kind && &*i.spec.field == path)
    }

    /// A cheap estimate of how many slots the indexes would offer for `p` (capped at
    /// [`CAP`]); `None` when no index helps.
    fn estimate(&self, p: &Pred) -> Option<usize> {
        match p {
            Pred::And(ps) => ps.iter().filter_map(|p| self.estimate(p)).min(),
            Pred::Or(ps) => ps.iter().map(|p| self.estimate(p)).sum::<Option<usize>>().map(|n| n.min(CAP)),
            Pred::Not(_) | Pred::Exists { .. } => None,
            Pred::Eq { path, key } if &**path == R::ID_FIELD => Some(usize::from(key_to_id::<R>(key).is_some())),
            Pred::In { path, keys } if &**path == R::ID_FIELD => Some(keys.len()),
            Pred::Eq { path, key } => self.estimate_eq(path, key),
            Pred::IsNull { path } => self.estimate_eq(path, &Key::Null),
            Pred::In { path, keys } => {
                keys.iter().map(|k| self.estimate_eq(path, k)).sum::<Option<usize>>().map(|n| n.min(CAP))
            }
            Pred::Cmp { path, op, key } => {
                let (lo, hi) = cmp_range(*op, key);
                let IndexData::Ordered(o) = &self.index(path, IndexKind::Ordered)?.data else { return None };
                Some(o.count(as_ref(&lo), as_ref(&hi), CAP))
            }
            Pred::StartsWith { path, needle } => {
                if let Some(IndexData::Ordered(o)) = self.index(path, IndexKind::Ordered).map(|i| &i.data) {
                    let lo = Key::Str(needle.clone());
                    return Some(o.count(Bound::Included(&lo), as_ref(&prefix_upper(needle)), CAP));
                }
                self.estimate_ngram(path, needle)
            }
            Pred::EndsWith { path, needle } | Pred::Contains { path, needle } => self.estimate_ngram(path, needle),
            Pred::Text { path, tokens, distance } => {
                let IndexData::Text(t) = &self.index(path, IndexKind::Text)?.data else { return None };
                if *distance == 0 { tokens.iter().map(|q| t.count(q)).min() } else { Some(CAP / 2) }
            }
        }
    }

    fn estimate_eq(&self, path: &str, key: &Key) -> Option<usize> {
        if let Some(IndexData::Eq(e)) = self.index(path, IndexKind::Eq).map(|i| &i.data) {
            return Some(e.get(key).len());
        }
        let IndexData::Ordered(o) = &self.index(path, IndexKind::Ordered)?.data else { return None };
        Some(o.count(Bound::Included(key), Bound::Included(key), CAP))
    }

    fn estimate_ngram(&self, path: &str, needle: &str) -> Option<usize> {
        let IndexData::Substring(n) = &self.index(path, IndexKind::Substring)?.data else { return None };
        n.estimate(needle).map(|n| n.min(CAP))
    }

    /// The candidate slots for `p`, or `None` when no index helps.
    fn candidates(&self, p: &Pred, used: &mut Option<&mut Vec<IndexUse>>) -> Option<Cands> {
        let mut note = |field: &str, kind: Option<IndexKind>, exact: bool| {
            if let Some(u) = used.as_deref_mut() {
                u.push(IndexUse { field: field.to_owned(), kind, op: op_name(p), exact });
            }
        };
        let exact = |slots: Vec<u32>| Some(Cands { slots, exact: true });
        match p {
            Pred::And(ps) => {
                // Materialise the cheap children; large ones are left to the re-check.
                let ests: Vec<Option<usize>> = ps.iter().map(|c| self.estimate(c)).collect();
                let min = ests.iter().flatten().min().copied()?;
                let mut acc: Option<Vec<u32>> = None;
                let mut all_exact = true;
                let mut order: Vec<usize> = (0..ps.len()).collect();
                order.sort_by_key(|&i| ests[i].unwrap_or(usize::MAX));
                for i in order {
                    match ests[i] {
                        Some(e) if e <= min.saturating_mul(8).max(64) => {
                            let Some(c) = self.candidates(&ps[i], used) else {
                                all_exact = false;
                                continue;
                            };
                            all_exact &= c.exact;
                            acc = Some(match acc {
                                None => c.slots,
                                Some(a) => intersect(&a, &c.slots),
                            });
                        }
                        _ => all_exact = false,
                    }
                }
                acc.map(|slots| Cands { slots, exact: all_exact })
            }
            Pred::Or(ps) => {
                let mut lists = Vec::with_capacity(ps.len());
                let mut all_exact = true;
                for c in ps {
                    let c = self.candidates(c, used)?;
                    all_exact &= c.exact;
                    lists.push(c.slots);
                }
                Some(Cands { slots: union_all(lists), exact: all_exact })
            }
            Pred::Not(_) | Pred::Exists { .. } => None,
            Pred::Eq { path, key } if &**path == R::ID_FIELD => {
                note(path, None, true);
                exact(key_to_id::<R>(key).and_then(|id| self.by_id.get(&id).copied()).into_iter().collect())
            }
            Pred::In { path, keys } if &**path == R::ID_FIELD => {
                note(path, None, true);
                let mut s: Vec<u32> =
                    keys.iter().filter_map(|k| key_to_id::<R>(k).and_then(|id| self.by_id.get(&id).copied())).collect();
                s.sort_unstable();
                s.dedup();
                exact(s)
            }
            Pred::Eq { path, key } => {
                self.eq_slots(path, std::slice::from_ref(key), &mut note).map(|s| Cands { slots: s, exact: true })
            }
            Pred::IsNull { path } => {
                self.eq_slots(path, &[Key::Null], &mut note).map(|s| Cands { slots: s, exact: true })
            }
            Pred::In { path, keys } => self.eq_slots(path, keys, &mut note).map(|s| Cands { slots: s, exact: true }),
            Pred::Cmp { path, op, key } => {
                let IndexData::Ordered(o) = &self.index(path, IndexKind::Ordered)?.data else { return None };
                note(path, Some(IndexKind::Ordered), true);
                let (lo, hi) = cmp_range(*op, key);
                let mut s: Vec<u32> = o.slots(as_ref(&lo), as_ref(&hi)).collect();
                s.sort_unstable();
                s.dedup();
                exact(s)
            }
            Pred::StartsWith { path, needle } => {
                if let Some(IndexData::Ordered(o)) = self.index(path, IndexKind::Ordered).map(|i| &i.data) {
                    note(path, Some(IndexKind::Ordered), true);
                    let lo = Key::Str(needle.clone());
                    let mut s: Vec<u32> = o.slots(Bound::Included(&lo), as_ref(&prefix_upper(needle))).collect();
                    s.sort_unstable();
                    s.dedup();
                    return exact(s);
                }
                self.ngram_slots(path, needle, &mut note)
            }
            Pred::EndsWith { path, needle } | Pred::Contains { path, needle } => {
                self.ngram_slots(path, needle, &mut note)
            }
            Pred::Text { path, tokens, distance } => {
                let IndexData::Text(t) = &self.index(path, IndexKind::Text)?.data else { return None };
                note(path, Some(IndexKind::Text), true);
                exact(t.lookup(tokens, *distance))
            }
        }
    }

    fn eq_slots(
        &self,
        path: &str,
        keys: &[Key],
        note: &mut impl FnMut(&str, Option<IndexKind>, bool),
    ) -> Option<Vec<u32>> {
        let lists: Vec<Vec<u32>> = if let Some(IndexData::Eq(e)) = self.index(path, IndexKind::Eq).map(|i| &i.data) {
            note(path, Some(IndexKind::Eq), true);
            keys.iter()
                .map(|k| {
                    let mut l = e.get(k).to_vec();
                    l.sort_unstable();
                    l
                })
                .collect()
        } else {
            let IndexData::Ordered(o) = &self.index(path, IndexKind::Ordered)?.data else { return None };
            note(path, Some(IndexKind::Ordered), true);
            keys.iter()
                .map(|k| {
                    let mut l: Vec<u32> = o.slots(Bound::Included(k), Bound::Included(k)).collect();
                    l.sort_unstable();
                    l
                })
                .collect()
        };
        Some(union_all(lists))
    }

    fn ngram_slots(
        &self,
        path: &str,
        needle: &str,
        note: &mut impl FnMut(&str, Option<IndexKind>, bool),
    ) -> Option<Cands> {
        let IndexData::Substring(n) = &self.index(path, IndexKind::Substring)?.data else { return None };
        let slots = n.candidates(needle)?;
        note(path, Some(IndexKind::Substring), false);
        Some(Cands { slots, exact: false })
    }

    /// Runs a query with the indexes.
    pub fn query(&self, q: &Compiled) -> Result<QueryPage<'_, R>, QueryError> {
        self.run(q, None)
    }

    /// Runs a query and says how.
    pub fn query_explained(&self, q: &Compiled) -> Result<(QueryPage<'_, R>, Explain), QueryError> {
        let mut ex = Explain::default();
        let page = self.run(q, Some(&mut ex))?;
        Ok((page, ex))
    }

    /// Says how a query would run, without keeping its results.
    pub fn explain(&self, q: &Compiled) -> Result<Explain, QueryError> {
        Ok(self.query_explained(q)?.1)
    }

    /// Runs a query by checking every record, ignoring the indexes (the reference the
    /// indexed path is tested against).
    pub fn scan(&self, q: &Compiled) -> Result<QueryPage<'_, R>, QueryError> {
        let matched = self.filter_slots(q.pred.as_ref(), None);
        self.cut(q, matched)
    }

    fn filter_slots(&self, pred: Option<&Pred>, within: Option<Vec<u32>>) -> Vec<u32> {
        match (pred, within) {
            (None, None) => (0..self.slots.len() as u32).filter(|&s| self.slot(s).is_some()).collect(),
            (None, Some(w)) => w,
            (Some(p), None) => {
                (0..self.slots.len() as u32).filter(|&s| self.slot(s).is_some_and(|e| p.matches(&*e.record))).collect()
            }
            (Some(p), Some(mut w)) => {
                w.retain(|&s| self.slot(s).is_some_and(|e| p.matches(&*e.record)));
                w
            }
        }
    }

    fn run(&self, q: &Compiled, mut ex: Option<&mut Explain>) -> Result<QueryPage<'_, R>, QueryError> {
        if let Some(page) = self.try_walk(q, ex.as_deref_mut())? {
            return Ok(page);
        }
        let mut used = ex.as_ref().map(|_| Vec::new());
        let cands = match &q.pred {
            Some(p) => self.candidates(p, &mut used.as_mut()),
            None => None,
        };
        let (matched, access, recheck, visited) = match cands {
            Some(c) if c.exact => {
                let n = c.slots.len();
                (c.slots, Access::Candidates { count: n, exact: true }, false, n)
            }
            Some(c) => {
                let n = c.slots.len();
                (
                    self.filter_slots(q.pred.as_ref(), Some(c.slots)),
                    Access::Candidates { count: n, exact: false },
                    true,
                    n,
                )
            }
            None => (self.filter_slots(q.pred.as_ref(), None), Access::Scan, q.pred.is_some(), self.len()),
        };
        if let Some(ex) = ex {
            *ex = Explain { access, used: used.unwrap_or_default(), recheck, visited };
        }
        self.cut(q, matched)
    }

    /// Orders matched slots and cuts the page out of them (top-K selection where a limit
    /// allows).
    fn cut(&self, q: &Compiled, mut matched: Vec<u32>) -> Result<QueryPage<'_, R>, QueryError> {
        // With no sort the order is id order; when slots are in id order, the matches (always
        // in slot order here) are already sorted and no record needs to be read to order them.
        let presorted = q.sort.is_empty() && self.id_ordered;
        let cmp = |a: &u32, b: &u32| match (self.slot(*a), self.slot(*b)) {
            (Some(x), Some(y)) => cmp_records(&q.sort, &*x.record, &*y.record),
            _ => a.cmp(b),
        };
        let top_k = |v: &mut [u32], k: usize, cmp: &dyn Fn(&u32, &u32) -> Ordering| {
            if !presorted {
                top_k(v, k, cmp);
            }
        };
        match &q.page {
            PageSpec::Offset { limit, offset, total } => {
                let n = matched.len();
                let end = limit.map_or(n, |l| offset.saturating_add(l).min(n));
                top_k(&mut matched, end, &cmp);
                let start = (*offset).min(end);
                let items: Vec<_> = matched[start..end].iter().filter_map(|s| self.slot(*s)).collect();
                let mut info = self.page_info(q, &items, false);
                info.has_next = Some(end < n);
                info.total = total.then_some(n as u64);
                Ok(QueryPage { items, page_info: info })
            }
            PageSpec::After { limit, pos } => {
                if let Some(pos) = pos {
                    let id = parse_id::<R>(pos)?;
                    matched.retain(|s| {
                        self.slot(*s).is_some_and(|e| cmp_to_pos(&q.sort, &*e.record, &pos.keys, &id).is_gt())
                    });
                }
                let n = matched.len();
                let end = limit.map_or(n, |l| l.min(n));
                top_k(&mut matched, end, &cmp);
                let items: Vec<_> = matched[..end].iter().filter_map(|s| self.slot(*s)).collect();
                let mut info = self.page_info(q, &items, false);
                info.has_next = Some(end < n);
                Ok(QueryPage { items, page_info: info })
            }
            PageSpec::Before { limit, pos } => {
                if let Some(pos) = pos {
                    let id = parse_id::<R>(pos)?;
                    matched.retain(|s| {
                        self.slot(*s).is_some_and(|e| cmp_to_pos(&q.sort, &*e.record, &pos.keys, &id).is_lt())
                    });
                }
                let n = matched.len();
                let take = limit.map_or(n, |l| l.min(n));
                // The last `take` in order.
                let page: Vec<u32> = if presorted {
                    matched[n - take..].to_vec()
                } else {
                    top_k(&mut matched, take, &|a, b| cmp(b, a));
                    let mut p = matched[..take].to_vec();
                    p.reverse();
                    p
                };
                let items: Vec<_> = page.iter().filter_map(|s| self.slot(*s)).collect();
                let mut info = self.page_info(q, &items, true);
                info.has_next = Some(take < n);
                Ok(QueryPage { items, page_info: info })
            }
        }
    }

    fn token(&self, sort: &[SortKey], e: &Entry<R>) -> String {
        let keys: Vec<Key> = sort.iter().map(|k| e.record.path(&k.path).map_or(Key::Null, |v| v.to_key())).collect();
        encode_cursor(sort, &keys, &e.record.id().to_string())
    }

    /// Cursor tokens (only cursor pages need them: building one costs a JSON encoding).
    fn page_info(&self, q: &Compiled, items: &[&Entry<R>], backward: bool) -> PageInfo {
        if matches!(q.page, PageSpec::Offset { .. }) {
            return PageInfo::default();
        }
        let sort = &q.sort;
        let start = items.first().map(|e| self.token(sort, e));
        let end = items.last().map(|e| self.token(sort, e));
        PageInfo {
            cursor: if backward { start.clone() } else { end.clone() },
            start_cursor: start,
            end_cursor: end,
            ..PageInfo::default()
        }
    }

    /// Tries the walk path; `Ok(None)` when it does not apply or ran out of budget.
    fn try_walk(&self, q: &Compiled, ex: Option<&mut Explain>) -> Result<Option<QueryPage<'_, R>>, QueryError> {
        let (limit, skip, backward, pos) = match &q.page {
            PageSpec::Offset { limit: Some(l), offset, total: false } => (*l, *offset, false, None),
            PageSpec::After { limit: Some(l), pos } => (*l, 0, false, pos.as_ref()),
            PageSpec::Before { limit: Some(l), pos } => (*l, 0, true, pos.as_ref()),
            _ => return Ok(None),
        };
        let est = q.pred.as_ref().and_then(|p| self.estimate(p));
        if est.is_some_and(|e| e < CAP) && !q.sort.is_empty() {
            return Ok(None);
        }
        let pos = match pos {
            Some(p) => Some((p, parse_id::<R>(p)?)),
            None => None,
        };
        let need = skip.saturating_add(limit).saturating_add(1);
        let mut out: Vec<u32> = Vec::with_capacity(need.min(1024));
        let mut visited = 0usize;
        let pred = q.pred.as_ref();
        let accept = |s: u32, out: &mut Vec<u32>, check: bool| -> bool {
            let Some(e) = self.slot(s) else { return false };
            if let Some((p, id)) = &pos {
                let o = cmp_to_pos(&q.sort, &*e.record, &p.keys, id);
                if (backward && !o.is_lt()) || (!backward && !o.is_gt()) {
                    return false;
                }
            }
            if !check || pred.is_none_or(|p| p.matches(&*e.record)) {
                out.push(s);
            }
            out.len() >= need
        };
        let mut check = pred.is_some();
        let walked: IndexSpec;
        if let Some(first) = q.sort.first() {
            let Some(index) = self.index(&first.path, IndexKind::Ordered) else { return Ok(None) };
            let IndexData::Ordered(o) = &index.data else { return Ok(None) };
            if !o.sortable() {
                return Ok(None);
            }
            walked = index.spec.clone();
            let reverse = first.desc != backward;
            let start = pos.as_ref().and_then(|(p, _)| p.keys.first().cloned());
            let range = match (&start, reverse) {
                (Some(k), false) => o.range(Bound::Included(k), Bound::Unbounded),
                (Some(k), true) => o.range(Bound::Unbounded, Bound::Included(k)),
                (None, _) => o.range(Bound::Unbounded, Bound::Unbounded),
            };
            let mut iter: Box<dyn Iterator<Item = (Cow<'_, Key>, u32)>> =
                if reverse { Box::new(range.rev()) } else { Box::new(range) };
            // Visit groups of equal first keys; order each group by the full sort.
            let mut group: Vec<u32> = Vec::new();
            let mut pending = iter.next();
            let cmp_full = |a: &u32, b: &u32| match (self.slot(*a), self.slot(*b)) {
                (Some(x), Some(y)) => {
                    let o = cmp_records(&q.sort, &*x.record, &*y.record);
                    if backward { o.reverse() } else { o }
                }
                _ => a.cmp(b),
            };
            'walk: while let Some((key, slot)) = pending {
                group.clear();
                group.push(slot);
                pending = iter.next();
                while let Some((k, s)) = &pending {
                    if *k != key {
                        break;
                    }
                    group.push(*s);
                    pending = iter.next();
                }
                visited += group.len();
                if group.len() > 1 {
                    group.sort_by(cmp_full);
                }
                for &s in &group {
                    if accept(s, &mut out, check) {
                        break 'walk;
                    }
                }
                if visited > WALK_BUDGET {
                    return Ok(None);
                }
            }
        } else {
            // No sort: id order. Walk the smallest id-ordered list of a top-level conjunct (an
            // equality posting; or, while slot order is id order, a trigram or token list,
            // checking the leaf's other lists by binary search) until the page is full.
            let Some((index, list, siblings, exact)) = self.id_ordered_posting(pred) else { return Ok(None) };
            walked = index.spec.clone();
            // The walked lists answer an exact leaf exactly: alone, it needs no re-check.
            let alone = match pred {
                Some(Pred::And(ps)) => ps.len() == 1,
                Some(_) => true,
                None => false,
            };
            check = !(exact && alone);
            let in_all = |s: u32| siblings.iter().all(|l| l.binary_search(&s).is_ok());
            let start = match &pos {
                Some((_, id)) => list.partition_point(|&s| {
                    self.slot(s).is_some_and(|e| if backward { e.record.id() < id } else { e.record.id() <= id })
                }),
                None if backward => list.len(),
                None => 0,
            };
            if backward {
                for &s in list[..start].iter().rev() {
                    visited += 1;
                    if (in_all(s) && accept(s, &mut out, check)) || visited > WALK_BUDGET {
                        break;
                    }
                }
            } else {
                for &s in &list[start..] {
                    visited += 1;
                    if (in_all(s) && accept(s, &mut out, check)) || visited > WALK_BUDGET {
                        break;
                    }
                }
            }
            if visited > WALK_BUDGET && out.len() < need {
                return Ok(None);
            }
        }
        let has_next = out.len() >= need;
        out.truncate(need - 1);
        let mut page: Vec<u32> = out.into_iter().skip(skip).collect();
        if backward {
            page.reverse();
        }
        let items: Vec<_> = page.iter().filter_map(|s| self.slot(*s)).collect();
        let mut info = self.page_info(q, &items, backward);
        info.has_next = Some(has_next);
        if let Some(ex) = ex {
            *ex =
                Explain { access: Access::Walk { index: walked }, used: Vec::new(), recheck: pred.is_some(), visited };
        }
        Ok(Some(QueryPage { items, page_info: info }))
    }

    /// The shortest id-ordered list among the top-level conjuncts of `pred`, with the other
    /// lists of its leaf (whose intersection with it holds every match of the leaf).
    ///
    /// Equality postings are always in id order; trigram and token lists are in slot order,
    /// which is id order while the table is `id_ordered`.
    fn id_ordered_posting(&self, pred: Option<&Pred>) -> Option<Walkable<'_>> {
        let leaves: &[Pred] = match pred? {
            Pred::And(ps) => ps,
            p => std::slice::from_ref(p),
        };
        leaves
            .iter()
            .filter_map(|p| {
                let (index, mut lists, exact) = match p {
                    Pred::Eq { path, key } if &**path != R::ID_FIELD => {
                        let index = self.index(path, IndexKind::Eq)?;
                        let IndexData::Eq(e) = &index.data else { return None };
                        (index, vec![e.get(key)], true)
                    }
                    Pred::IsNull { path } => {
                        let index = self.index(path, IndexKind::Eq)?;
                        let IndexData::Eq(e) = &index.data else { return None };
                        (index, vec![e.get(&Key::Null)], true)
                    }
                    Pred::Contains { path, needle }
                    | Pred::StartsWith { path, needle }
                    | Pred::EndsWith { path, needle }
                        if self.id_ordered =>
                    {
                        let index = self.index(path, IndexKind::Substring)?;
                        let IndexData::Substring(n) = &index.data else { return None };
                        (index, n.lists(needle)?, false)
                    }
                    Pred::Text { path, tokens, distance: 0 } if self.id_ordered => {
                        let index = self.index(path, IndexKind::Text)?;
                        let IndexData::Text(t) = &index.data else { return None };
                        (index, t.lists(tokens), true)
                    }
                    _ => return None,
                };
                lists.sort_by_key(|l| l.len());
                let driving = lists.remove(0);
                Some((index, driving, lists, exact))
            })
            .min_by_key(|(_, l, _, _)| l.len())
    }
}

fn parse_id<R: Keyed>(pos: &CursorPos) -> Result<R::Id, QueryError> {
    R::Id::from_str(&pos.id).map_err(|_| QueryError::Cursor(CursorError::Malformed("id does not fit this store")))
}

/// Puts the `k` smallest (by `cmp`) first, in order.
fn top_k(v: &mut [u32], k: usize, cmp: impl Fn(&u32, &u32) -> Ordering) {
    if k == 0 {
        return;
    }
    if k < v.len() {
        v.select_nth_unstable_by(k - 1, &cmp);
        v[..k].sort_unstable_by(&cmp);
    } else {
        v.sort_unstable_by(&cmp);
    }
}
