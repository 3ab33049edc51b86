//! Relations between stores and the include plan: the related records of a whole page are
//! found with one indexed `in` lookup per relation, never one lookup per record (no N+1).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::core::fields::Keyed;
use crate::core::index::{IndexKind, IndexSpec};
use crate::core::planner::Explain;
use crate::core::query::{Filter, Query, QueryError, Sort};
use crate::core::table::{Entry, Table};
use crate::core::value::{Key, Value};

/// How two stores relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RelationKind {
    /// This record holds the other's key (`post.author_id → author.id`): at most one.
    BelongsTo,
    /// Other records hold this one's key (`author.id ← post.author_id`): any number.
    HasMany,
    /// Like `HasMany`, but at most one.
    HasOne,
}

/// A named relation from a store to a target store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relation {
    /// The name results are included under (`"author"`, `"posts"`).
    pub name: String,
    /// The kind.
    pub kind: RelationKind,
    /// The target store's name.
    pub target: String,
    /// The field on this store's records: the foreign key for `BelongsTo`, usually `id` otherwise.
    pub local: String,
    /// The field on the target's records: usually `id` for `BelongsTo`, the foreign key otherwise.
    pub foreign: String,
}

impl Relation {
    /// `name`: this record's `local` field holds a `target` record's id.
    pub fn belongs_to(name: impl Into<String>, target: impl Into<String>, local: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: RelationKind::BelongsTo,
            target: target.into(),
            local: local.into(),
            foreign: "id".into(),
        }
    }
    /// `name`: `target` records whose `foreign` field holds this record's id.
    pub fn has_many(name: impl Into<String>, target: impl Into<String>, foreign: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: RelationKind::HasMany,
            target: target.into(),
            local: "id".into(),
            foreign: foreign.into(),
        }
    }
    /// `name`: the one `target` record whose `foreign` field holds this record's id.
    pub fn has_one(name: impl Into<String>, target: impl Into<String>, foreign: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: RelationKind::HasOne,
            target: target.into(),
            local: "id".into(),
            foreign: foreign.into(),
        }
    }

    /// The index the target store needs for includes to be one indexed lookup (`None` when
    /// the foreign field is the target's id).
    pub fn target_index(&self, target_id_field: &str) -> Option<IndexSpec> {
        (self.foreign != target_id_field).then(|| IndexSpec { field: self.foreign.clone(), kind: IndexKind::Eq })
    }
}

/// What to include for a page: a relation, and for to-many relations an order and a cap per
/// parent record.
#[derive(Clone, Debug, PartialEq)]
pub struct Include {
    /// The relation.
    pub relation: Relation,
    /// The order of a to-many relation's records.
    pub sort: Vec<Sort>,
    /// At most this many related records per parent.
    pub limit: Option<usize>,
}

impl From<Relation> for Include {
    fn from(relation: Relation) -> Self {
        Include { relation, sort: Vec::new(), limit: None }
    }
}

/// The related records of each parent in a page, in page order.
#[derive(Debug)]
pub struct Included<'t, T> {
    /// The relation's name.
    pub name: String,
    /// For each parent, its related records (at most one for `BelongsTo` / `HasOne`).
    pub per_parent: Vec<Vec<&'t Entry<T>>>,
    /// How the one lookup ran (`None` when the page had no keys to look up).
    pub lookup: Option<Explain>,
}

/// Resolves an include for a page of parents with one `in` query on the target table.
pub fn include<'t, S, T>(inc: &Include, parents: &[&S], target: &'t Table<T>) -> Result<Included<'t, T>, QueryError>
where
    S: Keyed,
    T: Keyed,
{
    let rel = &inc.relation;
    let parent_keys: Vec<Vec<Key>> = parents.iter().map(|p| keys(p.path(&rel.local))).collect();
    let mut wanted: Vec<Key> = parent_keys.iter().flatten().cloned().collect();
    wanted.sort();
    wanted.dedup();
    let mut per_parent: Vec<Vec<&'t Entry<T>>> = vec![Vec::new(); parents.len()];
    if wanted.is_empty() {
        return Ok(Included { name: rel.name.clone(), per_parent, lookup: None });
    }
    let q = Query {
        filter: Some(Filter::In { field: rel.foreign.clone(), values: wanted.iter().map(Key::to_json).collect() }),
        sort: inc.sort.clone(),
        page: None,
    }
    .compile()?;
    let (found, explain) = target.query_explained(&q)?;
    // Group the target records by their foreign key value(s).
    let mut by_key: HashMap<Key, Vec<&'t Entry<T>>> = HashMap::new();
    for e in found.items {
        for k in keys(e.record.path(&rel.foreign)) {
            by_key.entry(k).or_default().push(e);
        }
    }
    let cap = match rel.kind {
        RelationKind::BelongsTo | RelationKind::HasOne => Some(1),
        RelationKind::HasMany => inc.limit,
    };
    for (slot, ks) in per_parent.iter_mut().zip(&parent_keys) {
        for k in ks {
            if let Some(list) = by_key.get(k) {
                slot.extend(list.iter().copied());
            }
        }
        if ks.len() > 1 {
            slot.dedup_by(|a, b| std::ptr::eq(*a, *b));
        }
        if let Some(cap) = cap {
            slot.truncate(cap);
        }
    }
    Ok(Included { name: rel.name.clone(), per_parent, lookup: Some(explain) })
}

fn keys(v: Option<Value<'_>>) -> Vec<Key> {
    let mut out = Vec::new();
    if let Some(v) = v {
        crate::core::index::each_scalar(v, &mut |s| {
            if !matches!(s, Value::Null) {
                out.push(s.to_key());
            }
        });
    }
    out
}
