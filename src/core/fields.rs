//! Borrowed field access by name and by dotted path, for typed records and JSON alike.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::value::{Key, Value};

/// Field access by name, without allocation.
///
/// Derived by `#[derive(Record)]` (and `#[derive(Fields)]` for nested structs); implemented for
/// JSON objects so that the server evaluates the same queries over schema-free records.
pub trait Fields {
    /// The top-level field `name`: `None` when the record has no such field.
    fn field(&self, name: &str) -> Option<Value<'_>>;

    /// A dotted path such as `"stats.hp"`: each step but the last must reach an object.
    fn path(&self, path: &str) -> Option<Value<'_>> {
        // A plain byte scan: field names are short, and indexes ask on every changed record.
        match path.bytes().position(|b| b == b'.') {
            None => self.field(path),
            Some(dot) => match self.field(&path[..dot])? {
                Value::Object(inner) => inner.path(&path[dot + 1..]),
                _ => None,
            },
        }
    }
}

/// A list a field holds, read element by element.
pub trait FieldList {
    /// The number of elements.
    fn len(&self) -> usize;
    /// Element `i` (`Value::Null` past the end).
    fn at(&self, i: usize) -> Value<'_>;
    /// Whether the list is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Rust type that a record field may have: it shows itself as a [`Value`].
pub trait ToValue {
    /// The borrowed value.
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i8, i16, i32, i64, u8, u16, u32, isize);

impl ToValue for u64 {
    fn to_value(&self) -> Value<'_> {
        match i64::try_from(*self) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(*self as f64),
        }
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value<'_> {
        match i64::try_from(*self) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(*self as f64),
        }
    }
}
impl ToValue for f32 {
    fn to_value(&self) -> Value<'_> {
        Value::Float(f64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Float(*self)
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Str(self)
    }
}
impl ToValue for Box<str> {
    fn to_value(&self) -> Value<'_> {
        Value::Str(self)
    }
}
impl ToValue for &str {
    fn to_value(&self) -> Value<'_> {
        Value::Str(self)
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}
impl<T: ToValue> ToValue for Box<T> {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Vec<T> {
    fn to_value(&self) -> Value<'_> {
        Value::List(self)
    }
}
impl<T: ToValue> FieldList for Vec<T> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn at(&self, i: usize) -> Value<'_> {
        self.get(i).map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: ToValue> FieldList for Box<[T]> {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn at(&self, i: usize) -> Value<'_> {
        self.get(i).map_or(Value::Null, ToValue::to_value)
    }
}
impl ToValue for Key {
    fn to_value(&self) -> Value<'_> {
        self.as_value()
    }
}

impl<V: ToValue> Fields for HashMap<String, V> {
    fn field(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(ToValue::to_value)
    }
}
impl<V: ToValue> Fields for BTreeMap<String, V> {
    fn field(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(ToValue::to_value)
    }
}
impl<V: ToValue> ToValue for HashMap<String, V> {
    fn to_value(&self) -> Value<'_> {
        Value::Object(self)
    }
}
impl<V: ToValue> ToValue for BTreeMap<String, V> {
    fn to_value(&self) -> Value<'_> {
        Value::Object(self)
    }
}

impl ToValue for serde_json::Value {
    fn to_value(&self) -> Value<'_> {
        match self {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => Value::List(a),
            serde_json::Value::Object(o) => Value::Object(o),
        }
    }
}
impl Fields for serde_json::Map<String, serde_json::Value> {
    fn field(&self, name: &str) -> Option<Value<'_>> {
        self.get(name).map(ToValue::to_value)
    }
}
impl Fields for serde_json::Value {
    fn field(&self, name: &str) -> Option<Value<'_>> {
        match self {
            serde_json::Value::Object(o) => o.field(name),
            _ => None,
        }
    }
}

/// An id type: what a store is keyed by. Strings on the wire; integers, UUIDs or ULIDs in Rust.
///
/// Implemented for every type that is hashable, ordered, printable and parseable.
pub trait RecordId: Clone + Eq + Hash + Ord + Debug + Display + FromStr + Send + Sync + 'static {}
impl<T> RecordId for T where T: Clone + Eq + Hash + Ord + Debug + Display + FromStr + Send + Sync + 'static {}

/// Something with an id and fields: what the core engine stores, indexes and queries.
pub trait Keyed: Fields + Clone + Send + Sync + 'static {
    /// The id type.
    type Id: RecordId;
    /// The name of the id field (queries on it use the id map, not an index).
    const ID_FIELD: &'static str = "id";
    /// The id of this record.
    fn id(&self) -> &Self::Id;

    /// Asks the processor to start loading the heap buffers a clone of this record reads
    /// (its strings and lists). A large frame calls it a few writes ahead of each copy, so
    /// that the copy does not wait on memory. A hint only: it never changes a result.
    ///
    /// `#[derive(Record)]` implements it for fields of type `String`, `Vec<_>`, `Box<str>`
    /// and `Option<String>`; the default does nothing.
    #[inline]
    fn warm(&self) {}
}

/// What `#[derive(Record)]` calls on each field for [`Keyed::warm`]: a field whose type has a
/// heap buffer implements [`WarmHeap`]; every other type falls back to [`WarmNothing`] (by
/// auto-ref: the first applies where it exists).
#[doc(hidden)]
pub struct Warm<'a, T: ?Sized>(pub &'a T);

/// Prefetches a field's heap buffer (see [`Warm`]).
#[doc(hidden)]
pub trait WarmHeap {
    /// The hint.
    fn warm(&self);
}

/// The fallback of [`WarmHeap`]: no buffer, no hint.
#[doc(hidden)]
pub trait WarmNothing {
    /// Nothing.
    #[inline(always)]
    fn warm(&self) {}
}

impl<T: ?Sized> WarmNothing for &Warm<'_, T> {}

impl WarmHeap for Warm<'_, String> {
    #[inline(always)]
    fn warm(&self) {
        super::table::prefetch_bytes(self.0.as_bytes());
    }
}

impl WarmHeap for Warm<'_, Box<str>> {
    #[inline(always)]
    fn warm(&self) {
        super::table::prefetch_bytes(self.0.as_bytes());
    }
}

impl WarmHeap for Warm<'_, Option<String>> {
    #[inline(always)]
    fn warm(&self) {
        if let Some(s) = self.0 {
            super::table::prefetch_bytes(s.as_bytes());
        }
    }
}

impl<T> WarmHeap for Warm<'_, Vec<T>> {
    #[inline(always)]
    fn warm(&self) {
        if !self.0.is_empty() {
            super::table::prefetch(self.0.as_ptr());
        }
    }
}

/// A typed record: a [`Keyed`] value with a store name and serde for disk and wire.
///
/// Derive it: `#[derive(Record, Clone, Serialize, Deserialize)] #[record(store = "players")]`.
pub trait Record: Keyed + Serialize + DeserializeOwned {
    /// The store (resource) name on disk and on the wire.
    const STORE: &'static str;
    /// The names of the top-level fields, in declaration order.
    const FIELDS: &'static [&'static str];
}

/// A schema-free JSON record: an object with a non-empty string `"id"`.
///
/// The server stores these and evaluates queries over them with the same engine.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonRecord {
    id: String,
    body: serde_json::Map<String, serde_json::Value>,
}

/// Why a JSON value is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonRecordError {
    /// The value is not a JSON object.
    #[error("a record must be a JSON object")]
    NotAnObject,
    /// The object has no non-empty string `id`.
    #[error("a record needs a non-empty string \"id\"")]
    MissingId,
}

impl JsonRecord {
    /// Makes a record of a JSON object, checking its id. A `"version"` field is dropped:
    /// versions live beside records, not in them.
    pub fn new(mut body: serde_json::Map<String, serde_json::Value>) -> Result<Self, JsonRecordError> {
        body.remove("version");
        match body.get("id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Self { id: s.clone(), body }),
            _ => Err(JsonRecordError::MissingId),
        }
    }

    /// Makes a record of any JSON value.
    pub fn from_value(v: serde_json::Value) -> Result<Self, JsonRecordError> {
        match v {
            serde_json::Value::Object(o) => Self::new(o),
            _ => Err(JsonRecordError::NotAnObject),
        }
    }

    /// The fields, `id` included.
    pub fn body(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.body
    }

    /// The record as a JSON object.
    pub fn into_body(self) -> serde_json::Map<String, serde_json::Value> {
        self.body
    }
}

impl Serialize for JsonRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for JsonRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = serde_json::Map::deserialize(d)?;
        JsonRecord::new(body).map_err(serde::de::Error::custom)
    }
}

impl Fields for JsonRecord {
    fn field(&self, name: &str) -> Option<Value<'_>> {
        self.body.field(name)
    }
}

impl Keyed for JsonRecord {
    type Id = String;
    fn id(&self) -> &String {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_reach_nested_fields() {
        let v = json!({"id": "p1", "stats": {"hp": 12, "tags": ["a", "b"]}, "name": null});
        assert_eq!(v.path("stats.hp").and_then(|v| v.as_f64()), Some(12.0));
        assert!(matches!(v.path("name"), Some(Value::Null)));
        assert!(v.path("stats.mp").is_none());
        assert!(v.path("name.x").is_none());
        match v.path("stats.tags") {
            Some(Value::List(l)) => assert_eq!(l.at(1).as_str(), Some("b")),
            other => panic!("expected a list, got {other:?}"),
        }
    }

    #[test]
    fn json_records_need_an_id() {
        assert_eq!(JsonRecord::from_value(json!([1])), Err(JsonRecordError::NotAnObject));
        assert_eq!(JsonRecord::from_value(json!({"id": ""})), Err(JsonRecordError::MissingId));
        assert_eq!(JsonRecord::from_value(json!({"id": 4})), Err(JsonRecordError::MissingId));
        let r = JsonRecord::from_value(json!({"id": "a", "version": 3, "x": 1})).expect("record");
        assert_eq!(r.id(), "a");
        assert!(r.field("version").is_none());
    }
}
