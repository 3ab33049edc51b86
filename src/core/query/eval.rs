//! Evaluating a compiled filter and sort against one record: the definition every index must
//! agree with (the property tests hold indexes to it).

use std::cmp::Ordering;

use super::text::{levenshtein_within, tokenize};
use crate::core::fields::{Fields, Keyed};
use crate::core::value::{Key, Value};

/// A compiled filter.
#[derive(Clone, Debug)]
pub(crate) enum Pred {
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    Eq {
        path: Box<str>,
        key: Key,
    },
    In {
        path: Box<str>,
        keys: Vec<Key>,
    },
    Cmp {
        path: Box<str>,
        op: CmpOp,
        key: Key,
    },
    StartsWith {
        path: Box<str>,
        needle: Box<str>,
    },
    EndsWith {
        path: Box<str>,
        needle: Box<str>,
    },
    Contains {
        path: Box<str>,
        needle: Box<str>,
    },
    IsNull {
        path: Box<str>,
    },
    Exists {
        path: Box<str>,
    },
    /// Sorted, deduplicated query tokens; distance 0 is `match`.
    Text {
        path: Box<str>,
        tokens: Vec<Box<[char]>>,
        distance: u8,
    },
}

/// A range comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub(crate) fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Gte => o != Ordering::Less,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Lte => o != Ordering::Greater,
        }
    }
}

/// One compiled sort key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SortKey {
    pub path: Box<str>,
    pub desc: bool,
}

/// Applies `f` to a scalar field value, or to each element of a list: true if any holds.
fn any_elem(v: Value<'_>, f: &mut impl FnMut(Value<'_>) -> bool) -> bool {
    match v {
        Value::List(l) => (0..l.len()).any(|i| any_elem(l.at(i), f)),
        v => f(v),
    }
}

/// Whether a value stands in a range comparison with a key of the same kind (numbers with
/// numbers, strings with strings; nothing else compares).
pub(crate) fn range_holds(v: Value<'_>, op: CmpOp, key: &Key) -> bool {
    let comparable = matches!(
        (v, key),
        (Value::Int(_) | Value::Float(_), Key::Int(_) | Key::Float(_)) | (Value::Str(_), Key::Str(_))
    );
    if !comparable || matches!(v, Value::Float(x) if x.is_nan()) {
        return false;
    }
    op.holds(v.total_cmp(&key.as_value()))
}

/// Whether the field's text holds every query token (within `distance` edits).
pub(crate) fn text_holds(v: Value<'_>, tokens: &[Box<[char]>], distance: u8) -> bool {
    let mut have: Vec<Vec<char>> = Vec::new();
    any_elem(v, &mut |e| {
        if let Value::Str(s) = e {
            have.extend(tokenize(s).map(|t| t.chars().collect()));
        }
        false
    });
    tokens.iter().all(|q| have.iter().any(|t| levenshtein_within(q, t, usize::from(distance))))
}

impl Pred {
    /// Whether a record matches.
    pub(crate) fn matches<R: Fields + ?Sized>(&self, r: &R) -> bool {
        match self {
            Pred::And(ps) => ps.iter().all(|p| p.matches(r)),
            Pred::Or(ps) => ps.iter().any(|p| p.matches(r)),
            Pred::Not(p) => !p.matches(r),
            Pred::Eq { path, key } => eq_holds(r.path(path), key),
            Pred::In { path, keys } => {
                let v = r.path(path);
                keys.iter().any(|k| eq_holds(v, k))
            }
            Pred::Cmp { path, op, key } => r.path(path).is_some_and(|v| any_elem(v, &mut |e| range_holds(e, *op, key))),
            Pred::StartsWith { path, needle } => str_holds(r.path(path), |s| s.starts_with(&**needle)),
            Pred::EndsWith { path, needle } => str_holds(r.path(path), |s| s.ends_with(&**needle)),
            Pred::Contains { path, needle } => str_holds(r.path(path), |s| s.contains(&**needle)),
            Pred::IsNull { path } => matches!(r.path(path), None | Some(Value::Null)),
            Pred::Exists { path } => !matches!(r.path(path), None | Some(Value::Null)),
            Pred::Text { path, tokens, distance } => r.path(path).is_some_and(|v| text_holds(v, tokens, *distance)),
        }
    }
}

/// `eq`: a missing field equals null; a list field equals a scalar when an element does.
pub(crate) fn eq_holds(v: Option<Value<'_>>, key: &Key) -> bool {
    match v {
        None => matches!(key, Key::Null),
        Some(v) => any_elem(v, &mut |e| e.loose_eq(&key.as_value())),
    }
}

fn str_holds(v: Option<Value<'_>>, f: impl Fn(&str) -> bool) -> bool {
    v.is_some_and(|v| {
        any_elem(v, &mut |e| match e {
            Value::Str(s) => f(s),
            _ => false,
        })
    })
}

/// The sort order of two records: each sort key (missing as null), then id ascending.
pub(crate) fn cmp_records<R: Keyed>(sort: &[SortKey], a: &R, b: &R) -> Ordering {
    for k in sort {
        let va = a.path(&k.path).unwrap_or(Value::Null);
        let vb = b.path(&k.path).unwrap_or(Value::Null);
        let o = va.total_cmp(&vb);
        if o != Ordering::Equal {
            return if k.desc { o.reverse() } else { o };
        }
    }
    a.id().cmp(b.id())
}

/// The order of a record against a cursor position (whose id was parsed to `R::Id`).
pub(crate) fn cmp_to_pos<R: Keyed>(sort: &[SortKey], r: &R, keys: &[Key], id: &R::Id) -> Ordering {
    for (k, key) in sort.iter().zip(keys) {
        let v = r.path(&k.path).unwrap_or(Value::Null);
        let o = v.total_cmp(&key.as_value());
        if o != Ordering::Equal {
            return if k.desc { o.reverse() } else { o };
        }
    }
    r.id().cmp(id)
}
