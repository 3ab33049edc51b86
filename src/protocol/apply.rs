//! The server semantics of one write entry over a record's stored state: versions,
//! compare-and-set, merge, loose / strict upsert, commutative patch ops.
//!
//! Storage-agnostic: the memory and redb executors and atoma-server all call it inside their
//! own transactions.
#![expect(
    clippy::result_large_err,
    reason = "a rejection carries the current record by design; it is built once per failed entry"
)]

use std::borrow::Cow;

use serde_json::{Map, Value as Json};

use super::{Current, StandardError, WireWriteEntry, with_version};
use crate::core::{UpsertMode, WriteAction, apply_patch};

/// A stored record: its fields (with `id`, without `version`) and version.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The fields.
    pub value: Map<String, Json>,
    /// The version (≥ 1).
    pub version: u64,
}

/// What applying an entry decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The record's id.
    pub id: String,
    /// The state to store (`None`: delete).
    pub next: Option<Stored>,
}

fn conflict(id: &str, cur: Option<&Stored>, why: &str) -> (StandardError, Option<Current>) {
    let current =
        Current { value: cur.map(|c| with_version(c.value.clone(), c.version)), version: cur.map(|c| c.version) };
    (StandardError::conflict(format!("{why} (record {id})")), Some(current))
}

fn object(v: Option<Cow<'_, Json>>, what: &str) -> Result<Map<String, Json>, (StandardError, Option<Current>)> {
    let mut m = match v {
        Some(Cow::Owned(Json::Object(m))) => m,
        Some(Cow::Borrowed(Json::Object(m))) => m.clone(),
        Some(_) => return Err((StandardError::invalid_write(format!("{what}: `value` must be an object")), None)),
        None => return Err((StandardError::invalid_write(format!("{what}: `value` is required")), None)),
    };
    m.remove("version");
    Ok(m)
}

/// The id an entry writes: `item.entityId`, else `value.id` for a create. `None` for a create
/// that leaves the id to the server.
pub fn entry_target(e: &WireWriteEntry) -> Option<String> {
    e.item.entity_id.clone().or_else(|| match &e.item.value {
        Some(Json::Object(m)) => m.get("id").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    })
}

/// Applies one entry to a record's current state. `new_id` is called when a create leaves the
/// id to the server. Errors carry the current copy on `CONFLICT`.
pub fn apply_entry(
    e: &WireWriteEntry,
    cur: Option<&Stored>,
    new_id: impl FnOnce() -> String,
) -> Result<Applied, (StandardError, Option<Current>)> {
    let given = Given {
        target: entry_target(e),
        value: e.item.value.as_ref().map(Cow::Borrowed),
        base_version: e.item.base_version,
    };
    apply(e, given, cur, new_id)
}

/// [`apply_entry`] for a caller that owns the entry and has no more use for its value: the
/// value moves into the record instead of being copied (`e.item.value` is `None` after), and
/// the entry is applied as if based on `base_version`.
pub fn apply_entry_taking(
    e: &mut WireWriteEntry,
    base_version: Option<u64>,
    cur: Option<&Stored>,
    new_id: impl FnOnce() -> String,
) -> Result<Applied, (StandardError, Option<Current>)> {
    let target = entry_target(e);
    let given = Given { target, value: e.item.value.take().map(Cow::Owned), base_version };
    apply(e, given, cur, new_id)
}

/// What an entry gives apart from its action and options.
struct Given<'a> {
    target: Option<String>,
    value: Option<Cow<'a, Json>>,
    base_version: Option<u64>,
}

fn apply(
    e: &WireWriteEntry,
    given: Given<'_>,
    cur: Option<&Stored>,
    new_id: impl FnOnce() -> String,
) -> Result<Applied, (StandardError, Option<Current>)> {
    let Given { target, value, base_version } = given;
    let id = match (target, e.action) {
        (Some(id), _) if !id.is_empty() => id,
        (None, WriteAction::Create) => new_id(),
        _ => return Err((StandardError::invalid_write("`item.entityId` is required"), None)),
    };
    let version = cur.map_or(0, |c| c.version);
    let check_base = |required: bool| -> Result<(), (StandardError, Option<Current>)> {
        match (base_version, cur) {
            (Some(b), Some(c)) if b != c.version => {
                Err(conflict(&id, cur, &format!("based on version {b}, current is {}", c.version)))
            }
            (None, Some(_)) if required => Err(conflict(&id, cur, "an existing record needs `baseVersion`")),
            _ => Ok(()),
        }
    };
    let with_id = |mut m: Map<String, Json>| -> Result<Map<String, Json>, (StandardError, Option<Current>)> {
        match m.get("id") {
            None => {
                m.insert("id".into(), Json::String(id.clone()));
                Ok(m)
            }
            Some(Json::String(s)) if *s == id => Ok(m),
            Some(_) => Err((StandardError::invalid_write(format!("`value.id` must equal the entity id {id}")), None)),
        }
    };
    let next = |value| Ok(Applied { id: id.clone(), next: Some(Stored { value, version: version + 1 }) });
    match e.action {
        WriteAction::Create => {
            if cur.is_some() {
                return Err(conflict(&id, cur, "a record with this id exists"));
            }
            next(with_id(object(value, "create")?)?)
        }
        WriteAction::Update => {
            let Some(c) = cur else { return Err((StandardError::not_found(format!("no record {id}")), None)) };
            if base_version.is_none() {
                return Err((StandardError::invalid_write("update needs `baseVersion`"), None));
            }
            check_base(true)?;
            let given = object(value, "update")?;
            let merged = if e.options.as_ref().and_then(|o| o.merge) == Some(true) {
                let mut m = c.value.clone();
                m.extend(given);
                m
            } else {
                given
            };
            next(with_id(merged)?)
        }
        WriteAction::Upsert => {
            let mode = e.options.as_ref().and_then(|o| o.upsert.as_ref()).map(|u| u.mode).unwrap_or_default();
            if mode == UpsertMode::Strict {
                check_base(true)?;
            }
            let given = object(value, "upsert")?;
            let value = match (cur, e.options.as_ref().and_then(|o| o.merge)) {
                (Some(c), Some(true)) => {
                    let mut m = c.value.clone();
                    m.extend(given);
                    m
                }
                _ => given,
            };
            next(with_id(value)?)
        }
        WriteAction::Delete => {
            if cur.is_none() {
                return Err((StandardError::not_found(format!("no record {id}")), None));
            }
            if base_version.is_none() {
                return Err((StandardError::invalid_write("delete needs `baseVersion`"), None));
            }
            check_base(true)?;
            Ok(Applied { id, next: None })
        }
        WriteAction::Patch => {
            let Some(c) = cur else { return Err((StandardError::not_found(format!("no record {id}")), None)) };
            let ops = e.item.ops.as_deref().unwrap_or_default();
            let commutative = ops.iter().all(|o| o.is_commutative());
            check_base(!commutative)?;
            let mut m = c.value.clone();
            apply_patch(&mut m, ops).map_err(|err| (StandardError::invalid_write(err.to_string()), None))?;
            next(m)
        }
    }
}
