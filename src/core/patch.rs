//! Patch ops on a record's JSON form: `inc`, `max`, `min`, `addToSet`, `removeFromSet` (which
//! commute, so hot counters never conflict) and `set`, `unset`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// One patch op, exactly as on the wire (`{"op": "inc", "path": "gold", "value": 5}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum PatchOp {
    /// Adds a number (a missing field counts as 0).
    Inc {
        /// Dotted path.
        path: String,
        /// The amount.
        value: serde_json::Number,
    },
    /// Keeps the larger of the field and `value`.
    Max {
        /// Dotted path.
        path: String,
        /// The bound.
        value: serde_json::Number,
    },
    /// Keeps the smaller of the field and `value`.
    Min {
        /// Dotted path.
        path: String,
        /// The bound.
        value: serde_json::Number,
    },
    /// Sets the field.
    Set {
        /// Dotted path.
        path: String,
        /// The value.
        value: Json,
    },
    /// Removes the field.
    Unset {
        /// Dotted path.
        path: String,
    },
    /// Adds `value` to the list unless present (a missing field becomes `[value]`).
    AddToSet {
        /// Dotted path.
        path: String,
        /// The element.
        value: Json,
    },
    /// Removes every element equal to `value` from the list.
    RemoveFromSet {
        /// Dotted path.
        path: String,
        /// The element.
        value: Json,
    },
}

impl PatchOp {
    /// The op's path.
    pub fn path(&self) -> &str {
        match self {
            PatchOp::Inc { path, .. }
            | PatchOp::Max { path, .. }
            | PatchOp::Min { path, .. }
            | PatchOp::Set { path, .. }
            | PatchOp::Unset { path }
            | PatchOp::AddToSet { path, .. }
            | PatchOp::RemoveFromSet { path, .. } => path,
        }
    }

    /// Whether the op commutes with others of its kind (and so needs no version check).
    pub fn is_commutative(&self) -> bool {
        !matches!(self, PatchOp::Set { .. } | PatchOp::Unset { .. })
    }

    /// `inc(path, by)`.
    pub fn inc(path: impl Into<String>, by: impl Into<serde_json::Number>) -> Self {
        PatchOp::Inc { path: path.into(), value: by.into() }
    }
    /// `set(path, value)`.
    pub fn set(path: impl Into<String>, value: impl Into<Json>) -> Self {
        PatchOp::Set { path: path.into(), value: value.into() }
    }
    /// `addToSet(path, value)`.
    pub fn add_to_set(path: impl Into<String>, value: impl Into<Json>) -> Self {
        PatchOp::AddToSet { path: path.into(), value: value.into() }
    }
}

/// Why a patch cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("patch `{op}` at `{path}`: {reason}")]
pub struct PatchError {
    /// The op name.
    pub op: &'static str,
    /// The path.
    pub path: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn num(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(0.0)
}

fn to_number(x: f64, int_like: bool) -> Json {
    if int_like && x.fract() == 0.0 && x.abs() < 9.0e15 {
        Json::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)
    }
}

/// Applies ops in order to a JSON object. On error nothing is changed.
pub fn apply_patch(target: &mut Map<String, Json>, ops: &[PatchOp]) -> Result<(), PatchError> {
    let mut work = target.clone();
    for op in ops {
        apply_one(&mut work, op)?;
    }
    *target = work;
    Ok(())
}

fn apply_one(obj: &mut Map<String, Json>, op: &PatchOp) -> Result<(), PatchError> {
    let (name, path) = match op {
        PatchOp::Inc { path, .. } => ("inc", path),
        PatchOp::Max { path, .. } => ("max", path),
        PatchOp::Min { path, .. } => ("min", path),
        PatchOp::Set { path, .. } => ("set", path),
        PatchOp::Unset { path } => ("unset", path),
        PatchOp::AddToSet { path, .. } => ("addToSet", path),
        PatchOp::RemoveFromSet { path, .. } => ("removeFromSet", path),
    };
    let err = |reason| PatchError { op: name, path: path.clone(), reason };
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(err("empty path step"));
    }
    if path == "id" {
        return Err(err("the id cannot be patched"));
    }
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path.as_str()),
    };
    let mut cur = obj;
    if let Some(parents) = parents {
        for step in parents.split('.') {
            if matches!(op, PatchOp::Unset { .. }) && !cur.contains_key(step) {
                return Ok(());
            }
            let next = cur.entry(step).or_insert_with(|| Json::Object(Map::new()));
            cur = match next {
                Json::Object(o) => o,
                _ => return Err(err("a step of the path is not an object")),
            };
        }
    }
    let slot = cur.get(last);
    match op {
        PatchOp::Inc { value, .. } => {
            let (base, int_like) = match slot {
                None | Some(Json::Null) => (0.0, true),
                Some(Json::Number(n)) => (num(n), n.is_i64() || n.is_u64()),
                Some(_) => return Err(err("the field is not a number")),
            };
            let out = to_number(base + num(value), int_like && (value.is_i64() || value.is_u64()));
            cur.insert(last.to_owned(), out);
        }
        PatchOp::Max { value, .. } | PatchOp::Min { value, .. } => {
            let is_max = matches!(op, PatchOp::Max { .. });
            match slot {
                None | Some(Json::Null) => {
                    cur.insert(last.to_owned(), Json::Number(value.clone()));
                }
                Some(Json::Number(n)) => {
                    let replace = if is_max { num(value) > num(n) } else { num(value) < num(n) };
                    if replace {
                        cur.insert(last.to_owned(), Json::Number(value.clone()));
                    }
                }
                Some(_) => return Err(err("the field is not a number")),
            }
        }
        PatchOp::Set { value, .. } => {
            cur.insert(last.to_owned(), value.clone());
        }
        PatchOp::Unset { .. } => {
            cur.remove(last);
        }
        PatchOp::AddToSet { value, .. } => match cur.get_mut(last) {
            None | Some(Json::Null) => {
                cur.insert(last.to_owned(), Json::Array(vec![value.clone()]));
            }
            Some(Json::Array(a)) => {
                if !a.contains(value) {
                    a.push(value.clone());
                }
            }
            Some(_) => return Err(err("the field is not a list")),
        },
        PatchOp::RemoveFromSet { value, .. } => match cur.get_mut(last) {
            None | Some(Json::Null) => {}
            Some(Json::Array(a)) => a.retain(|v| v != value),
            Some(_) => return Err(err("the field is not a list")),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(v: Json, ops: Json) -> Result<Json, PatchError> {
        let ops: Vec<PatchOp> = serde_json::from_value(ops).expect("ops parse");
        let Json::Object(mut m) = v else { panic!("object") };
        apply_patch(&mut m, &ops)?;
        Ok(Json::Object(m))
    }

    #[test]
    fn commutative_ops() {
        let out = patch(
            json!({"id": "p", "gold": 5, "best": 3, "tags": ["a"]}),
            json!([
                {"op": "inc", "path": "gold", "value": 2},
                {"op": "inc", "path": "stats.kills", "value": 1},
                {"op": "max", "path": "best", "value": 9},
                {"op": "min", "path": "low", "value": 4},
                {"op": "addToSet", "path": "tags", "value": "b"},
                {"op": "addToSet", "path": "tags", "value": "a"},
                {"op": "removeFromSet", "path": "tags", "value": "a"},
                {"op": "unset", "path": "nope.deep"}
            ]),
        )
        .expect("applies");
        assert_eq!(out, json!({"id": "p", "gold": 7, "best": 9, "low": 4, "tags": ["b"], "stats": {"kills": 1}}));
    }

    #[test]
    fn bad_targets_fail_whole_patch() {
        let before = json!({"id": "p", "gold": "lots", "n": 1});
        let e =
            patch(before, json!([{"op": "inc", "path": "n", "value": 1}, {"op": "inc", "path": "gold", "value": 1}]))
                .expect_err("gold is a string");
        assert_eq!(e.to_string(), "patch `inc` at `gold`: the field is not a number");
        assert!(patch(json!({"id": "p"}), json!([{"op": "set", "path": "id", "value": "q"}])).is_err());
        assert!(patch(json!({"id": "p"}), json!([{"op": "set", "path": "a..b", "value": 1}])).is_err());
    }
}
