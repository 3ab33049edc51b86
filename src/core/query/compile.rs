//! Validating a wire [`Query`] into the form the engine evaluates.

use super::cursor::{CursorError, decode_cursor};
use super::eval::{CmpOp, Pred, SortKey};
use super::text::tokenize;
use super::{Dir, Filter, Page, Query, TextMode};
use crate::core::value::Key;

/// Why a query is invalid. On the wire this is `INVALID_QUERY`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A filter's value has a type the op does not take.
    #[error("`{op}` on field `{field}` needs {expected}, got {got}")]
    BadValue {
        /// The op.
        op: &'static str,
        /// The field.
        field: String,
        /// What the op takes.
        expected: &'static str,
        /// What it was given.
        got: String,
    },
    /// A field name is empty or has an empty path step.
    #[error("field name `{0}` is empty or has an empty path step")]
    BadField(String),
    /// A text filter with nothing to look for.
    #[error("`text` on field `{0}` has no tokens to look for")]
    EmptyText(String),
    /// A fuzzy distance above 2.
    #[error("`text` distance {0} is out of range (0..=2)")]
    Distance(u8),
    /// A cursor page with both `after` and `before`.
    #[error("a cursor page takes `after` or `before`, not both")]
    AfterAndBefore,
    /// A cursor token that cannot be used.
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// A validated query, ready to run against any table.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub(crate) pred: Option<Pred>,
    pub(crate) sort: Vec<SortKey>,
    pub(crate) page: PageSpec,
}

/// The page, validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PageSpec {
    /// Offset paging (no page at all: offset 0, no limit).
    Offset { limit: Option<usize>, offset: usize, total: bool },
    /// Cursor paging forward: after `pos`, or from the start.
    After { limit: Option<usize>, pos: Option<CursorPos> },
    /// Cursor paging backward: before `pos`, or from the end.
    Before { limit: Option<usize>, pos: Option<CursorPos> },
}

/// A position in the sort order, decoded from a token.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CursorPos {
    pub keys: Vec<Key>,
    pub id: String,
}

impl Query {
    /// Validates this query: every op's values, every field name, the page and its tokens.
    pub fn compile(&self) -> Result<Compiled, QueryError> {
        let pred = self.filter.as_ref().map(compile_filter).transpose()?;
        let sort = self
            .sort
            .iter()
            .map(|s| {
                check_field(&s.field)?;
                Ok(SortKey { path: s.field.as_str().into(), desc: s.dir == Dir::Desc })
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        let lim = |l: &Option<u32>| l.map(|l| l as usize);
        let page = match &self.page {
            None => PageSpec::Offset { limit: None, offset: 0, total: false },
            Some(Page::Offset { limit, offset, include_total }) => PageSpec::Offset {
                limit: lim(limit),
                offset: offset.unwrap_or(0) as usize,
                total: include_total.unwrap_or(false),
            },
            // An empty token (ext) stands for the end it names: `before: ""` is the last page.
            Some(Page::Cursor { limit, after, before }) => match (after, before) {
                (Some(_), Some(_)) => return Err(QueryError::AfterAndBefore),
                (None, Some(t)) => PageSpec::Before {
                    limit: lim(limit),
                    pos: if t.is_empty() { None } else { Some(decode_cursor(t, &sort)?) },
                },
                (Some(t), None) => PageSpec::After {
                    limit: lim(limit),
                    pos: if t.is_empty() { None } else { Some(decode_cursor(t, &sort)?) },
                },
                (None, None) => PageSpec::After { limit: lim(limit), pos: None },
            },
        };
        Ok(Compiled { pred, sort, page })
    }
}

fn check_field(f: &str) -> Result<(), QueryError> {
    if f.is_empty() || f.split('.').any(str::is_empty) {
        return Err(QueryError::BadField(f.to_owned()));
    }
    Ok(())
}

fn describe(v: &serde_json::Value) -> String {
    let kind = match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    };
    kind.to_owned()
}

fn scalar(op: &'static str, field: &str, v: &serde_json::Value) -> Result<Key, QueryError> {
    match v {
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Err(QueryError::BadValue {
            op,
            field: field.to_owned(),
            expected: "a scalar (null, bool, number or string)",
            got: describe(v),
        }),
        _ => Key::from_json(v).ok_or_else(|| QueryError::BadValue {
            op,
            field: field.to_owned(),
            expected: "a scalar",
            got: describe(v),
        }),
    }
}

fn orderable(op: &'static str, field: &str, v: &serde_json::Value) -> Result<Key, QueryError> {
    match v {
        serde_json::Value::Number(_) | serde_json::Value::String(_) => scalar(op, field, v),
        _ => Err(QueryError::BadValue {
            op,
            field: field.to_owned(),
            expected: "a number or a string",
            got: describe(v),
        }),
    }
}

fn compile_filter(f: &Filter) -> Result<Pred, QueryError> {
    let path = |field: &str| -> Result<Box<str>, QueryError> {
        check_field(field)?;
        Ok(field.into())
    };
    Ok(match f {
        Filter::And { args } => Pred::And(args.iter().map(compile_filter).collect::<Result<_, _>>()?),
        Filter::Or { args } => Pred::Or(args.iter().map(compile_filter).collect::<Result<_, _>>()?),
        Filter::Not { arg } => Pred::Not(Box::new(compile_filter(arg)?)),
        Filter::Eq { field, value } => Pred::Eq { path: path(field)?, key: scalar("eq", field, value)? },
        Filter::In { field, values } => Pred::In {
            path: path(field)?,
            keys: values.iter().map(|v| scalar("in", field, v)).collect::<Result<_, _>>()?,
        },
        Filter::Gt { field, value } => cmp(CmpOp::Gt, "gt", field, value)?,
        Filter::Gte { field, value } => cmp(CmpOp::Gte, "gte", field, value)?,
        Filter::Lt { field, value } => cmp(CmpOp::Lt, "lt", field, value)?,
        Filter::Lte { field, value } => cmp(CmpOp::Lte, "lte", field, value)?,
        Filter::StartsWith { field, value } => Pred::StartsWith { path: path(field)?, needle: value.as_str().into() },
        Filter::EndsWith { field, value } => Pred::EndsWith { path: path(field)?, needle: value.as_str().into() },
        Filter::Contains { field, value } => Pred::Contains { path: path(field)?, needle: value.as_str().into() },
        Filter::IsNull { field } => Pred::IsNull { path: path(field)? },
        Filter::Exists { field } => Pred::Exists { path: path(field)? },
        Filter::Text { field, query, mode, distance } => {
            let distance = match mode {
                TextMode::Match => 0,
                TextMode::Fuzzy => distance.unwrap_or(1),
            };
            if distance > 2 {
                return Err(QueryError::Distance(distance));
            }
            let mut tokens: Vec<Box<[char]>> = tokenize(query).map(|t| t.chars().collect()).collect();
            tokens.sort();
            tokens.dedup();
            if tokens.is_empty() {
                return Err(QueryError::EmptyText(field.clone()));
            }
            Pred::Text { path: path(field)?, tokens, distance }
        }
    })
}

fn cmp(op: CmpOp, name: &'static str, field: &str, v: &serde_json::Value) -> Result<Pred, QueryError> {
    check_field(field)?;
    Ok(Pred::Cmp { path: field.into(), op, key: orderable(name, field, v)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(j: serde_json::Value) -> Result<Compiled, QueryError> {
        serde_json::from_value::<Query>(j).expect("parses").compile()
    }

    #[test]
    fn wrong_value_types_are_clear_errors() {
        let e = compile(json!({"filter": {"op": "gt", "field": "level", "value": true}}))
            .expect_err("bool is not orderable");
        assert_eq!(e.to_string(), "`gt` on field `level` needs a number or a string, got a bool");
        assert!(compile(json!({"filter": {"op": "eq", "field": "x", "value": {"a": 1}}})).is_err());
        assert!(compile(json!({"filter": {"op": "in", "field": "x", "values": [[1]]}})).is_err());
        assert!(compile(json!({"filter": {"op": "eq", "field": "a..b", "value": 1}})).is_err());
        assert_eq!(
            compile(json!({"filter": {"op": "text", "field": "n", "query": "x", "mode": "fuzzy", "distance": 3}}))
                .expect_err("distance"),
            QueryError::Distance(3)
        );
        assert!(compile(json!({"filter": {"op": "text", "field": "n", "query": " ,"}})).is_err());
    }

    #[test]
    fn after_and_before_together_is_invalid() {
        let e = compile(json!({"page": {"mode": "cursor", "after": "x", "before": "y"}}));
        assert_eq!(e.expect_err("both"), QueryError::AfterAndBefore);
    }

    #[test]
    fn garbage_cursor_is_an_error() {
        let e = compile(json!({"page": {"mode": "cursor", "after": "%%%"}}));
        assert!(matches!(e, Err(QueryError::Cursor(_))));
    }
}
