//! The query model of the wire protocol: filter, sort and page, with serde of the exact wire
//! JSON and a typed builder for game systems.
//!
//! ```
//! use atoma::core::{field, Query};
//! let q = Query::filter(field("level").gte(10).and(field("guild").eq("red")))
//!     .sort_desc("score")
//!     .limit(20);
//! assert_eq!(q.page.as_ref().and_then(|p| p.limit()), Some(20));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

mod compile;
mod cursor;
pub(crate) mod eval;
mod text;

pub use compile::{Compiled, QueryError};
pub(crate) use compile::{CursorPos, PageSpec};
pub use cursor::CursorError;
pub(crate) use cursor::encode_cursor;
pub(crate) use eval::{Pred, SortKey, cmp_records};
pub use text::{levenshtein_within, tokenize};

/// A query: an optional filter, a sort, an optional page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Which records match; `None` matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// The order; ties are always broken by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sort: Vec<Sort>,
    /// Which slice of the ordered matches to return; `None` returns all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
}

/// A filter expression, exactly as it goes over the wire (`{"op": "eq", ...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum Filter {
    /// All of `args` hold (an empty list holds).
    And {
        /// The conjuncts.
        args: Vec<Filter>,
    },
    /// Any of `args` holds (an empty list does not).
    Or {
        /// The disjuncts.
        args: Vec<Filter>,
    },
    /// `arg` does not hold.
    Not {
        /// The negated filter.
        arg: Box<Filter>,
    },
    /// The field equals `value` (a list field: any element does).
    Eq {
        /// Field name or dotted path.
        field: String,
        /// A scalar: null, bool, number or string.
        value: Json,
    },
    /// The field equals one of `values`.
    In {
        /// Field name or dotted path.
        field: String,
        /// Scalars.
        values: Vec<Json>,
    },
    /// The field is greater than `value`.
    Gt {
        /// Field name or dotted path.
        field: String,
        /// A number (or a string, for ISO dates and names).
        value: Json,
    },
    /// The field is greater than or equal to `value`.
    Gte {
        /// Field name or dotted path.
        field: String,
        /// A number (or a string).
        value: Json,
    },
    /// The field is less than `value`.
    Lt {
        /// Field name or dotted path.
        field: String,
        /// A number (or a string).
        value: Json,
    },
    /// The field is less than or equal to `value`.
    Lte {
        /// Field name or dotted path.
        field: String,
        /// A number (or a string).
        value: Json,
    },
    /// The string field starts with `value` (case-sensitive).
    StartsWith {
        /// Field name or dotted path.
        field: String,
        /// The prefix.
        value: String,
    },
    /// The string field ends with `value` (case-sensitive).
    EndsWith {
        /// Field name or dotted path.
        field: String,
        /// The suffix.
        value: String,
    },
    /// The string field contains `value` (case-sensitive).
    Contains {
        /// Field name or dotted path.
        field: String,
        /// The substring.
        value: String,
    },
    /// The field is null or absent.
    IsNull {
        /// Field name or dotted path.
        field: String,
    },
    /// The field is present and not null.
    Exists {
        /// Field name or dotted path.
        field: String,
    },
    /// Full-text: every token of `query` occurs among the field's tokens (case-insensitive);
    /// in `fuzzy` mode, within `distance` edits (0..=2).
    Text {
        /// Field name or dotted path.
        field: String,
        /// The text to look for.
        query: String,
        /// `match` or `fuzzy`.
        #[serde(default)]
        mode: TextMode,
        /// Edits allowed per token in fuzzy mode (0..=2; default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        distance: Option<u8>,
    },
}

/// How a `text` filter compares tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TextMode {
    /// Tokens must be equal.
    #[default]
    Match,
    /// Tokens may differ by up to `distance` edits.
    Fuzzy,
}

/// One sort key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    /// Field name or dotted path.
    pub field: String,
    /// Ascending or descending.
    #[serde(default)]
    pub dir: Dir,
}

/// A sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Dir {
    /// Smallest first (nulls first).
    #[default]
    Asc,
    /// Largest first (nulls last).
    Desc,
}

/// A page: by offset, or by opaque cursor tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase", deny_unknown_fields)]
pub enum Page {
    /// `limit` matches after skipping `offset`.
    #[serde(rename_all = "camelCase")]
    Offset {
        /// How many at most.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// How many to skip.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u32>,
        /// Whether to count all matches into `pageInfo.total`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        include_total: Option<bool>,
    },
    /// `limit` matches after (or before) a position given by a token from an earlier page.
    Cursor {
        /// How many at most.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Continue after this token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Continue backwards before this token (**ext**: `""` starts from the end).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
    },
}

impl Page {
    /// The page's limit.
    pub fn limit(&self) -> Option<u32> {
        match self {
            Page::Offset { limit, .. } | Page::Cursor { limit, .. } => *limit,
        }
    }

    fn set_limit(&mut self, n: u32) {
        match self {
            Page::Offset { limit, .. } | Page::Cursor { limit, .. } => *limit = Some(n),
        }
    }
}

/// What a query returns besides the records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    /// The token to continue from in the direction of travel: the last record's for a forward
    /// page, the first record's for a `before` page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Whether more matches lie in the direction of travel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_next: Option<bool>,
    /// The number of all matches (offset pages with `includeTotal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// **(ext)** The first record's token (to page backwards from a forward page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cursor: Option<String>,
    /// **(ext)** The last record's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_cursor: Option<String>,
}

/// Starts a filter on a field: `field("level").gte(10)`.
pub fn field(name: impl Into<String>) -> FieldRef {
    FieldRef(name.into())
}

/// A field named in the builder; its methods make [`Filter`]s.
#[derive(Clone, Debug)]
pub struct FieldRef(String);

impl FieldRef {
    /// `field == value`.
    pub fn eq(self, value: impl Into<Json>) -> Filter {
        Filter::Eq { field: self.0, value: value.into() }
    }
    /// `field != value` (a `not` of `eq`).
    pub fn ne(self, value: impl Into<Json>) -> Filter {
        self.eq(value).not()
    }
    /// `field` is one of `values`.
    pub fn is_in<V: Into<Json>>(self, values: impl IntoIterator<Item = V>) -> Filter {
        Filter::In { field: self.0, values: values.into_iter().map(Into::into).collect() }
    }
    /// `field > value`.
    pub fn gt(self, value: impl Into<Json>) -> Filter {
        Filter::Gt { field: self.0, value: value.into() }
    }
    /// `field >= value`.
    pub fn gte(self, value: impl Into<Json>) -> Filter {
        Filter::Gte { field: self.0, value: value.into() }
    }
    /// `field < value`.
    pub fn lt(self, value: impl Into<Json>) -> Filter {
        Filter::Lt { field: self.0, value: value.into() }
    }
    /// `field <= value`.
    pub fn lte(self, value: impl Into<Json>) -> Filter {
        Filter::Lte { field: self.0, value: value.into() }
    }
    /// `lo <= field <= hi`.
    pub fn between(self, lo: impl Into<Json>, hi: impl Into<Json>) -> Filter {
        self.clone().gte(lo).and(self.lte(hi))
    }
    /// The string field starts with `prefix`.
    pub fn starts_with(self, prefix: impl Into<String>) -> Filter {
        Filter::StartsWith { field: self.0, value: prefix.into() }
    }
    /// The string field ends with `suffix`.
    pub fn ends_with(self, suffix: impl Into<String>) -> Filter {
        Filter::EndsWith { field: self.0, value: suffix.into() }
    }
    /// The string field contains `needle`.
    pub fn contains(self, needle: impl Into<String>) -> Filter {
        Filter::Contains { field: self.0, value: needle.into() }
    }
    /// The field is null or absent.
    pub fn is_null(self) -> Filter {
        Filter::IsNull { field: self.0 }
    }
    /// The field is present and not null.
    pub fn exists(self) -> Filter {
        Filter::Exists { field: self.0 }
    }
    /// Every token of `text` occurs in the field.
    pub fn matches(self, text: impl Into<String>) -> Filter {
        Filter::Text { field: self.0, query: text.into(), mode: TextMode::Match, distance: None }
    }
    /// Every token of `text` occurs in the field within `distance` edits (0..=2).
    pub fn fuzzy(self, text: impl Into<String>, distance: u8) -> Filter {
        Filter::Text { field: self.0, query: text.into(), mode: TextMode::Fuzzy, distance: Some(distance) }
    }
}

impl Filter {
    /// `self and other` (flattening nested `and`s).
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::And { mut args } => {
                args.push(other);
                Filter::And { args }
            }
            f => Filter::And { args: vec![f, other] },
        }
    }
    /// `self or other` (flattening nested `or`s).
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::Or { mut args } => {
                args.push(other);
                Filter::Or { args }
            }
            f => Filter::Or { args: vec![f, other] },
        }
    }
    /// `not self`.
    #[expect(clippy::should_implement_trait, reason = "builder reads as `f.not()`, like and/or")]
    pub fn not(self) -> Filter {
        Filter::Not { arg: Box::new(self) }
    }
}

impl Query {
    /// A query matching everything.
    pub fn all() -> Query {
        Query::default()
    }
    /// A query with a filter.
    pub fn filter(filter: Filter) -> Query {
        Query { filter: Some(filter), ..Query::default() }
    }
    /// Adds an ascending sort key.
    pub fn sort_asc(mut self, field: impl Into<String>) -> Query {
        self.sort.push(Sort { field: field.into(), dir: Dir::Asc });
        self
    }
    /// Adds a descending sort key.
    pub fn sort_desc(mut self, field: impl Into<String>) -> Query {
        self.sort.push(Sort { field: field.into(), dir: Dir::Desc });
        self
    }
    /// Sets the limit (an offset page unless a cursor page was chosen).
    pub fn limit(mut self, n: u32) -> Query {
        match &mut self.page {
            Some(p) => p.set_limit(n),
            None => self.page = Some(Page::Offset { limit: Some(n), offset: None, include_total: None }),
        }
        self
    }
    /// Skips `n` matches (an offset page).
    pub fn offset(mut self, n: u32) -> Query {
        let limit = self.page.as_ref().and_then(Page::limit);
        let include_total = match &self.page {
            Some(Page::Offset { include_total, .. }) => *include_total,
            _ => None,
        };
        self.page = Some(Page::Offset { limit, offset: Some(n), include_total });
        self
    }
    /// Counts all matches into `pageInfo.total` (an offset page).
    pub fn with_total(mut self) -> Query {
        let limit = self.page.as_ref().and_then(Page::limit);
        let offset = match &self.page {
            Some(Page::Offset { offset, .. }) => *offset,
            _ => None,
        };
        self.page = Some(Page::Offset { limit, offset, include_total: Some(true) });
        self
    }
    /// A cursor page continuing after `token` (`None`: the first page).
    pub fn after(mut self, token: Option<String>) -> Query {
        let limit = self.page.as_ref().and_then(Page::limit);
        self.page = Some(Page::Cursor { limit, after: token, before: None });
        self
    }
    /// A cursor page continuing backwards before `token` (`None`: the last page).
    pub fn before(mut self, token: Option<String>) -> Query {
        let limit = self.page.as_ref().and_then(Page::limit);
        self.page = Some(Page::Cursor { limit, after: None, before: Some(token.unwrap_or_default()) });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_json_round_trips() {
        let wire = json!({
            "filter": {"op": "and", "args": [
                {"op": "gte", "field": "level", "value": 10},
                {"op": "eq", "field": "guild", "value": "red"},
                {"op": "not", "arg": {"op": "isNull", "field": "stats.hp"}},
                {"op": "in", "field": "class", "values": ["mage", "rogue"]},
                {"op": "startsWith", "field": "name", "value": "Al"},
                {"op": "text", "field": "bio", "query": "dragon", "mode": "fuzzy", "distance": 1}
            ]},
            "sort": [{"field": "score", "dir": "desc"}],
            "page": {"mode": "offset", "limit": 20, "offset": 0, "includeTotal": true}
        });
        let q: Query = serde_json::from_value(wire.clone()).expect("parses");
        assert_eq!(serde_json::to_value(&q).expect("serializes"), wire);
    }

    #[test]
    fn builder_builds_wire_shape() {
        let q = Query::filter(field("level").gte(10).and(field("guild").eq("red"))).sort_desc("score").limit(20);
        assert_eq!(
            serde_json::to_value(&q).expect("serializes"),
            json!({
                "filter": {"op": "and", "args": [
                    {"op": "gte", "field": "level", "value": 10},
                    {"op": "eq", "field": "guild", "value": "red"}]},
                "sort": [{"field": "score", "dir": "desc"}],
                "page": {"mode": "offset", "limit": 20}
            })
        );
    }

    #[test]
    fn unknown_op_is_an_error_not_a_panic() {
        let r: Result<Query, _> = serde_json::from_value(json!({"filter": {"op": "near", "field": "x"}}));
        let msg = r.expect_err("rejects").to_string();
        assert!(msg.contains("near"), "{msg}");
        let r: Result<Query, _> = serde_json::from_value(json!({"page": {"mode": "cursor", "after": "a", "later": 1}}));
        assert!(r.is_err());
    }
}
