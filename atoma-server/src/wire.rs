//! The fast path of `POST /ops`: the body decoded straight into typed ops (no `Value` tree),
//! and the response encoded straight from the results and the stored records.
//!
//! **Decoding.** [`fast_parse`] reads a body in two passes over the bytes:
//!
//! 1. a checked pass that builds nothing: the same syntax, UTF-8, nesting-depth (128) and
//!    number-range checks a `Value` parse makes, so that nothing the old decoder rejected
//!    slips through the typed pass (which skips unknown fields without those checks);
//! 2. the typed pass: the envelope and each op by hand (last key wins, as in a JSON object
//!    decoded to a map), each op's payload straight into its typed request.
//!
//! It answers only for a request with no problem at all. On any doubt (a malformed body, a
//! bad op, a duplicate op id, too many ops or entries…) it answers `None` and the caller runs
//! the reference decoder ([`crate::ops`]`::parse`), which builds the exact errors the protocol
//! names, with the same codes and messages as before. A unit test checks that both agree
//! wherever the fast path answers.
//!
//! **Encoding.** Results are written into one byte buffer in op order, with their keys in
//! the order a `serde_json::Value` object has (sorted): the bytes are the ones the server
//! sent when it built the response as a `Value` tree, without building it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use atoma::JsonRecord;
use atoma::core::{Entry, PageInfo};
use atoma::protocol::{
    Change, Current, Meta, PROTOCOL_VERSION, PullRequest, PullResult, QueryRequest, StandardError, WriteItemResult,
    WriteRequest, WriteResult,
};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

use crate::config::Limits;
use crate::ops::{ParsedOp, Payload};

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Pass 1: any JSON value, checked like a `Value` parse (depth, numbers, UTF-8), kept nowhere.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_none<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        Checked::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// A string, borrowed from the body when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A typed value that must be a JSON object (a derived struct would also take an array).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One op's fields. Every key is decoded as it comes; a repeated key replaces the earlier one.
#[derive(Default)]
struct OpFields<'a> {
    op_id: Option<String>,
    kind: Option<Text<'a>>,
    meta: Option<&'a RawValue>,
    query: Option<QueryRequest>,
    write: Option<WriteRequest>,
    pull: Option<PullRequest>,
}

impl<'de> Deserialize<'de> for OpFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OpFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an op object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OpFields<'de>, A::Error> {
                let mut op = OpFields::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "opId" => op.op_id = Some(map.next_value::<Text<'de>>()?.0.into_owned()),
                        "kind" => op.kind = Some(map.next_value()?),
                        "meta" => op.meta = Some(map.next_value()?),
                        "query" => op.query = Some(map.next_value::<Object<QueryRequest>>()?.0),
                        "write" => op.write = Some(map.next_value::<Object<WriteRequest>>()?.0),
                        "pull" => op.pull = Some(map.next_value::<Object<PullRequest>>()?.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(op)
            }
        }
        d.deserialize_map(V)
    }
}

/// The envelope's fields (last key wins).
#[derive(Default)]
struct Envelope<'a> {
    meta: Option<&'a RawValue>,
    ops: Option<Vec<OpFields<'a>>>,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an envelope object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut env = Envelope::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "meta" => env.meta = Some(map.next_value()?),
                        "ops" => env.ops = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

/// A `meta` object, or `None` for `null`. `Err` when it is anything else or does not parse.
fn meta_of(raw: Option<&RawValue>) -> Result<Option<Meta>, ()> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) if text.starts_with('{') => serde_json::from_str::<Meta>(text).map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

/// The body as typed ops, when it has no problem at all; `None` otherwise (then the reference
/// decoder builds the answer, errors included).
pub(crate) fn fast_parse(body: &[u8], limits: &Limits) -> Option<(Meta, Vec<ParsedOp>)> {
    serde_json::from_slice::<Checked>(body).ok()?;
    let text = std::str::from_utf8(body).ok()?;
    let env: Envelope<'_> = serde_json::from_str(text).ok()?;
    let meta = meta_of(env.meta).ok()?.unwrap_or_else(Meta::v1);
    if meta.v != PROTOCOL_VERSION {
        return None;
    }
    let ops = env.ops?;
    if ops.len() > limits.max_ops {
        return None;
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(ops.len());
    for op in &ops {
        match op.op_id.as_deref() {
            Some(id) if !id.is_empty() && seen.insert(id) => {}
            _ => return None,
        }
    }
    drop(seen);
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let op_id = op.op_id?;
        meta_of(op.meta).ok()?;
        let payload = match op.kind?.0.as_ref() {
            "query" => Payload::Query(op.query?),
            "write" => {
                let w = op.write?;
                if w.entries.len() > limits.max_entries {
                    return None;
                }
                Payload::Write(w)
            }
            "changes.pull" => Payload::Pull(op.pull?),
            _ => return None,
        };
        out.push(ParsedOp { op_id, payload: Ok(payload) });
    }
    Some((meta, out))
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

fn serializer(out: &mut Vec<u8>) -> serde_json::Serializer<&mut Vec<u8>> {
    serde_json::Serializer::new(out)
}

/// Writes `value` at the end of `out`; on failure `out` is left as it was.
pub(crate) fn encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), StandardError> {
    let len = out.len();
    value.serialize(&mut serializer(out)).map_err(|e| {
        out.truncate(len);
        StandardError::internal(format!("encoding a result: {e}"))
    })
}

/// A stored record with its version, as `with_version` would make it, serialized in place: the
/// body's keys in order, `"version"` where a map would sort it.
pub(crate) struct RecordOut<'a> {
    pub body: &'a Map<String, Json>,
    pub version: u64,
}

impl Serialize for RecordOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length is not needed by the JSON serializer (and a stored body has no "version").
        let mut m = s.serialize_map(None)?;
        let mut placed = false;
        for (k, v) in self.body {
            if !placed {
                match k.as_str().cmp("version") {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        m.serialize_entry("version", &self.version)?;
                        placed = true;
                        continue;
                    }
                    std::cmp::Ordering::Greater => {
                        m.serialize_entry("version", &self.version)?;
                        placed = true;
                    }
                }
            }
            m.serialize_entry(k, v)?;
        }
        if !placed {
            m.serialize_entry("version", &self.version)?;
        }
        m.end()
    }
}

/// A query's result data: `{"data":[records],"pageInfo":{...}}`, from the table's entries.
pub(crate) struct QueryOut<'a> {
    pub items: &'a [&'a Entry<JsonRecord>],
    pub page_info: Option<&'a PageInfo>,
}

impl Serialize for QueryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Records<'a>(&'a [&'a Entry<JsonRecord>]);
        impl Serialize for Records<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for e in self.0 {
                    seq.serialize_element(&RecordOut { body: e.record.body(), version: e.version })?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("QueryResult", 2)?;
        st.serialize_field("data", &Records(self.items))?;
        if let Some(p) = self.page_info {
            st.serialize_field("pageInfo", &PageInfoOut(p))?;
        }
        st.end()
    }
}

/// `PageInfo` with sorted keys.
struct PageInfoOut<'a>(&'a PageInfo);

impl Serialize for PageInfoOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut st = s.serialize_struct("PageInfo", 5)?;
        if let Some(v) = &p.cursor {
            st.serialize_field("cursor", v)?;
        }
        if let Some(v) = &p.end_cursor {
            st.serialize_field("endCursor", v)?;
        }
        if let Some(v) = &p.has_next {
            st.serialize_field("hasNext", v)?;
        }
        if let Some(v) = &p.start_cursor {
            st.serialize_field("startCursor", v)?;
        }
        if let Some(v) = &p.total {
            st.serialize_field("total", v)?;
        }
        st.end()
    }
}

/// A value serialized through a `Value` (sorted keys); for the small and rare parts (errors,
/// meta).
struct Sorted<'a, T>(&'a T);

impl<T: Serialize> Serialize for Sorted<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?.serialize(s)
    }
}

/// `WriteResult` with sorted keys.
pub(crate) struct WriteOut<'a>(pub &'a WriteResult);

impl Serialize for WriteOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Items<'a>(&'a [WriteItemResult]);
        impl Serialize for Items<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for r in self.0 {
                    seq.serialize_element(&ItemOut(r))?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("WriteResult", 2)?;
        st.serialize_field("results", &Items(&self.0.results))?;
        if let Some(t) = &self.0.transaction_applied {
            st.serialize_field("transactionApplied", t)?;
        }
        st.end()
    }
}

/// `WriteItemResult` with sorted keys.
struct ItemOut<'a>(&'a WriteItemResult);

impl Serialize for ItemOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut st = s.serialize_struct("WriteItemResult", 7)?;
        if let Some(c) = &r.current {
            st.serialize_field("current", &CurrentOut(c))?;
        }
        if let Some(d) = &r.data {
            st.serialize_field("data", d)?;
        }
        if let Some(id) = &r.entity_id {
            st.serialize_field("entityId", id)?;
        }
        st.serialize_field("entryId", &r.entry_id)?;
        if let Some(e) = &r.error {
            st.serialize_field("error", &Sorted(e))?;
        }
        st.serialize_field("ok", &r.ok)?;
        if let Some(v) = &r.version {
            st.serialize_field("version", v)?;
        }
        st.end()
    }
}

/// `Current` with sorted keys.
struct CurrentOut<'a>(&'a Current);

impl Serialize for CurrentOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Current", 2)?;
        if let Some(v) = &self.0.value {
            st.serialize_field("value", v)?;
        }
        if let Some(v) = &self.0.version {
            st.serialize_field("version", v)?;
        }
        st.end()
    }
}

/// `PullResult` with sorted keys.
pub(crate) struct PullOut<'a>(pub &'a PullResult);

impl Serialize for PullOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Changes<'a>(&'a [Change]);
        impl Serialize for Changes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for c in self.0 {
                    seq.serialize_element(&ChangeOut(c))?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("PullResult", 2)?;
        st.serialize_field("changes", &Changes(&self.0.changes))?;
        st.serialize_field("nextCursor", &self.0.next_cursor)?;
        st.end()
    }
}

/// `Change` with sorted keys.
struct ChangeOut<'a>(&'a Change);

impl Serialize for ChangeOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut st = s.serialize_struct("Change", 6)?;
        st.serialize_field("changedAtMs", &c.changed_at_ms)?;
        st.serialize_field("entityId", &c.entity_id)?;
        st.serialize_field("kind", &c.kind)?;
        st.serialize_field("resource", &c.resource)?;
        if let Some(v) = &c.value {
            st.serialize_field("value", v)?;
        }
        st.serialize_field("version", &c.version)?;
        st.end()
    }
}

/// The response body being written: `{"data":{"results":[` … `]},"meta":…,"ok":true}`.
pub(crate) struct ResultsWriter {
    out: Vec<u8>,
    first: bool,
}

impl ResultsWriter {
    pub(crate) fn new(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(br#"{"data":{"results":["#);
        Self { out, first: true }
    }

    fn start(&mut self) {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
    }

    /// A successful op whose data `data` writes; if that fails, the op fails instead.
    pub(crate) fn ok_with(&mut self, op_id: &str, data: impl FnOnce(&mut Vec<u8>) -> Result<(), StandardError>) {
        self.start();
        let len = self.out.len();
        self.out.extend_from_slice(br#"{"data":"#);
        match data(&mut self.out) {
            Ok(()) => {
                self.out.extend_from_slice(br#","ok":true,"opId":"#);
                self.string(op_id);
                self.out.push(b'}');
            }
            Err(e) => {
                self.out.truncate(len);
                self.error_body(op_id, &e);
            }
        }
    }

    /// A failed op.
    pub(crate) fn err(&mut self, op_id: &str, e: &StandardError) {
        self.start();
        self.error_body(op_id, e);
    }

    fn error_body(&mut self, op_id: &str, e: &StandardError) {
        self.out.extend_from_slice(br#"{"error":"#);
        if encode(&mut self.out, &Sorted(e)).is_err() {
            self.out
                .extend_from_slice(br#"{"code":"INTERNAL","kind":"internal","message":"encoding an error failed"}"#);
        }
        self.out.extend_from_slice(br#","ok":false,"opId":"#);
        self.string(op_id);
        self.out.push(b'}');
    }

    fn string(&mut self, s: &str) {
        // A `str` always serializes.
        let _ = s.serialize(&mut serializer(&mut self.out));
    }

    /// Closes the results and writes `meta`.
    pub(crate) fn finish(mut self, meta: &Meta) -> Vec<u8> {
        self.out.extend_from_slice(br#"]},"meta":"#);
        if encode(&mut self.out, &Sorted(meta)).is_err() {
            self.out.extend_from_slice(br#"{"v":1}"#);
        }
        self.out.extend_from_slice(br#","ok":true}"#);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use atoma::protocol::{ChangeKind, OpResult, Warning, with_version};
    use serde_json::json;

    use super::*;
    use crate::ops::parse_reference;

    fn limits() -> Limits {
        Limits { max_ops: 5, max_entries: 3, ..Limits::default() }
    }

    fn valid_bodies() -> Vec<String> {
        let meta = json!({ "idempotencyKey": "k", "clientTimeMs": 1 });
        vec![
            json!({ "ops": [] }).to_string(),
            json!({ "meta": null, "ops": [] }).to_string(),
            json!({ "meta": { "v": 1, "traceId": "t", "requestId": "r", "deviceId": "d", "clientTimeMs": 5, "x": [1, {"y": null}] },
                    "ops": [], "pad": { "deep": [[[1.5e10, -0, true, false, null, "\u{e9}\n"]]] } })
            .to_string(),
            json!({ "ops": [
                { "opId": "q1", "kind": "query", "query": { "resource": "items", "query": {
                    "filter": { "op": "and", "args": [
                        { "op": "eq", "field": "id", "value": "s1" },
                        { "op": "gte", "field": "n", "value": 2.5 },
                        { "op": "in", "field": "tag", "values": ["a", 1, null] },
                        { "op": "not", "arg": { "op": "exists", "field": "gone" } },
                        { "op": "text", "field": "name", "query": "bob", "mode": "fuzzy", "distance": 1 } ] },
                    "sort": [ { "field": "n", "dir": "desc" } ],
                    "page": { "mode": "offset", "limit": 20, "offset": 3, "includeTotal": true } } },
                  "meta": { "v": 1, "traceId": "t" }, "extra": 1 },
                { "opId": "q\"2\\u00e9", "kind": "query", "query": { "resource": "a", "query": { "page": { "mode": "cursor", "limit": 2, "after": "zz" } } } },
                { "kind": "write", "opId": "w1", "write": { "resource": "a", "entries": [
                    { "entryId": "e1", "action": "create", "item": { "entityId": "x", "value": { "n": 1, "s": { "t": [1, 2] } }, "meta": meta } },
                    { "entryId": "e2", "action": "update", "item": { "entityId": "x", "baseVersion": 1, "value": { "n": 2 }, "meta": meta },
                      "options": { "merge": true, "returning": true } },
                    { "entryId": "e3", "action": "patch", "item": { "entityId": "x", "ops": [ { "op": "inc", "path": "n", "value": 1 } ], "meta": meta },
                      "options": { "upsert": { "mode": "loose" } } } ] } },
                { "opId": "p1", "kind": "changes.pull", "pull": { "cursor": "0", "limit": 10, "resources": ["a"] }, "meta": null },
                { "opId": "q3", "kind": "query", "query": { "query": {}, "resource": "a" }, "write": { "resource": "junk", "entries": [] } }
            ] })
            .to_string(),
            // Repeated keys: the last one wins, as in a map.
            r#"{"ops":[],"ops":[{"opId":"a","opId":"b","kind":"x","kind":"query","query":{"resource":"a","query":{}}}],"meta":{"v":1}}"#.into(),
            // Whitespace everywhere.
            " { \"ops\" : [ { \"opId\" : \"a\" , \"kind\" : \"query\" , \"query\" : { \"resource\" : \"a\" , \"query\" : { } } } ] , \"meta\" : { \"v\" : 1 } } \n".into(),
        ]
    }

    /// Wherever the fast path answers, the reference decoder answers the same.
    fn agree(body: &[u8]) -> bool {
        let limits = limits();
        match fast_parse(body, &limits) {
            Some(fast) => {
                let reference = parse_reference(body, &limits);
                assert_eq!(Ok(&fast), reference.as_ref(), "{}", String::from_utf8_lossy(body));
                true
            }
            None => false,
        }
    }

    #[test]
    fn valid_bodies_take_the_fast_path_and_agree() {
        for body in valid_bodies() {
            assert!(agree(body.as_bytes()), "the fast path declined {body}");
        }
    }

    #[test]
    fn problems_fall_back_to_the_reference_decoder() {
        let deep_payload = format!(
            r#"{{"ops":[{{"opId":"a","kind":"query","query":{{"resource":"a","query":{{"filter":{}{}}}}}}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let deep_ignored =
            format!(r#"{{"ops":[],"meta":{{"v":1,"x":{}1{}}}}}"#, "{\"a\":".repeat(200), "}".repeat(200));
        let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            b"null".to_vec(),
            b"{}".to_vec(),
            b"{\"ops\":[]".to_vec(),
            vec![b'{', 0xff, 0xfe, b'}'],
            br#"{"ops":[],"pad":"\xff"}"#.to_vec(),
            br#"{"ops":[],"pad":1e999}"#.to_vec(),
            br#"{"ops":[],"meta":{"v":1,"x":1e999}}"#.to_vec(),
            br#"{"ops":[],"meta":{"v":2}}"#.to_vec(),
            br#"{"ops":[],"meta":[]}"#.to_vec(),
            br#"{"ops":[],"meta":[1]}"#.to_vec(),
            br#"{"ops":{}}"#.to_vec(),
            br#"{"ops":[1]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"query","query":["a",{}]}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"query","query":{"resource":5,"query":{}}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"query","meta":[],"query":{"resource":"a","query":{}}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"query","query":{"resource":"a","query":{},"resource":"b"}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"query","query":{"resource":"a","query":{}}},{"opId":"a","kind":"query","query":{"resource":"a","query":{}}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"write","write":{"resource":"a","entries":[1,2,3,4]}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"changes.pull","pull":{"cursor":"0","limit":1e30}}]}"#.to_vec(),
            br#"{"ops":[{"opId":"","kind":"query"}]}"#.to_vec(),
            br#"{"ops":[{"opId":"a","kind":"explode"}]}"#.to_vec(),
            br#"{"ops":[{},{},{},{},{},{}]}"#.to_vec(),
            deep_payload.into_bytes(),
            deep_ignored.into_bytes(),
            deep_array.into_bytes(),
        ];
        for body in cases {
            assert!(fast_parse(&body, &limits()).is_none(), "{}", String::from_utf8_lossy(&body[..body.len().min(80)]));
            // The reference decoder answers without panicking.
            let _ = parse_reference(&body, &limits());
        }
    }

    #[test]
    fn mutated_bodies_never_disagree() {
        // Random edits of valid bodies: wherever the fast path still answers, it must agree.
        let alphabet = br#"{}[],:"0123456789-+eE.ntrufals\ /aqwpkx"#;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bodies = valid_bodies();
        let mut answered = 0;
        for round in 0..20_000 {
            let mut b = bodies[round % bodies.len()].clone().into_bytes();
            for _ in 0..1 + next() % 3 {
                if b.is_empty() {
                    break;
                }
                let at = (next() % b.len() as u64) as usize;
                let c = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 4 {
                    0 => {
                        b.remove(at);
                    }
                    1 => b.insert(at, c),
                    2 => b[at] = c,
                    _ => {
                        let end = (at + 1 + (next() % 12) as usize).min(b.len());
                        let piece = b[at..end].to_vec();
                        b.splice(at..at, piece);
                    }
                }
            }
            if agree(&b) {
                answered += 1;
            }
        }
        assert!(answered > 100, "the fast path answered only {answered} mutated bodies");
    }

    fn old_response(results: Vec<OpResult>, meta: &Meta) -> Vec<u8> {
        // How the server built its answer before: a `Value` tree.
        let body = json!({ "ok": true, "data": { "results": results }, "meta": meta });
        serde_json::to_vec(&body).expect("encodes")
    }

    #[test]
    fn responses_are_byte_identical_to_the_value_tree() {
        let mut rec = Map::new();
        rec.insert("id".into(), json!("p1"));
        rec.insert("a".into(), json!({ "z": 1, "b": [1.5, null, "x\"y"] }));
        rec.insert("zz".into(), json!(true));
        rec.insert("vz".into(), json!(-3));
        let mut late = Map::new();
        late.insert("id".into(), json!("q"));
        late.insert("a".into(), json!(1));
        let mut with_v = rec.clone();
        with_v.insert("version".into(), json!(99));
        for (body, version) in [(&rec, 7), (&late, 1), (&with_v, 3), (&Map::new(), 2)] {
            let mut out = Vec::new();
            encode(&mut out, &RecordOut { body, version }).expect("encodes");
            let old = serde_json::to_vec(&with_version(body.clone(), version)).expect("encodes");
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&old));
        }

        let page_info = PageInfo {
            cursor: Some("c".into()),
            has_next: Some(true),
            total: Some(4),
            start_cursor: Some("s".into()),
            end_cursor: Some("e".into()),
        };
        let entries = [
            Entry::new(JsonRecord::new(rec.clone()).expect("a record"), 7),
            Entry::new(JsonRecord::new(late.clone()).expect("a record"), 1),
        ];
        let items: Vec<&Entry<JsonRecord>> = entries.iter().collect();
        let query = atoma::protocol::QueryResult {
            data: vec![with_version(rec.clone(), 7), with_version(late.clone(), 1)],
            page_info: Some(page_info.clone()),
        };
        let error = StandardError::conflict("no").retryable().with_details(json!({ "b": 1, "a": [2] }));
        let write = WriteResult {
            transaction_applied: Some(true),
            results: vec![
                WriteItemResult::ok("e1".into(), "p1".into(), Some(3), Some(with_version(rec.clone(), 3))),
                WriteItemResult::ok("e2".into(), "p2".into(), None, None),
                WriteItemResult::err(
                    "e3".into(),
                    error.clone(),
                    Some(Current { value: Some(with_version(late.clone(), 1)), version: Some(1) }),
                ),
                WriteItemResult::err("e4".into(), StandardError::invalid_write("bad"), None),
            ],
        };
        let pull = PullResult {
            next_cursor: "12".into(),
            changes: vec![
                Change {
                    resource: "a".into(),
                    entity_id: "p1".into(),
                    kind: ChangeKind::Upsert,
                    version: 2,
                    changed_at_ms: 1_760_000_000_000,
                    value: Some(with_version(rec.clone(), 2)),
                },
                Change {
                    resource: "a".into(),
                    entity_id: "p2".into(),
                    kind: ChangeKind::Delete,
                    version: 3,
                    changed_at_ms: 5,
                    value: None,
                },
            ],
        };
        let meta = Meta {
            trace_id: Some("t".into()),
            request_id: Some("r".into()),
            server_time_ms: Some(1_760_000_000_123),
            warnings: vec![Warning {
                code: "LIMIT_CLAMPED".into(),
                message: "m".into(),
                details: Some(json!({ "z": 1, "a": 2 })),
            }],
            ..Meta::v1()
        };
        let mut w = ResultsWriter::new(16);
        w.ok_with("q1", |b| encode(b, &QueryOut { items: &items, page_info: Some(&page_info) }));
        w.err("x\"1", &error);
        w.ok_with("w1", |b| encode(b, &WriteOut(&write)));
        w.ok_with("p1", |b| encode(b, &PullOut(&pull)));
        w.ok_with("q2", |b| encode(b, &QueryOut { items: &[], page_info: Some(&PageInfo::default()) }));
        w.ok_with("bad", |_| Err(StandardError::internal("encoding a result: no")));
        let new = w.finish(&meta);
        let old = old_response(
            vec![
                OpResult::ok("q1".into(), serde_json::to_value(&query).expect("a value")),
                OpResult::err("x\"1".into(), error.clone()),
                OpResult::ok("w1".into(), serde_json::to_value(&write).expect("a value")),
                OpResult::ok("p1".into(), serde_json::to_value(&pull).expect("a value")),
                OpResult::ok(
                    "q2".into(),
                    serde_json::to_value(atoma::protocol::QueryResult {
                        data: vec![],
                        page_info: Some(PageInfo::default()),
                    })
                    .expect("a value"),
                ),
                OpResult::err("bad".into(), StandardError::internal("encoding a result: no")),
            ],
            &meta,
        );
        assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));

        let empty = ResultsWriter::new(0).finish(&Meta::v1());
        assert_eq!(String::from_utf8_lossy(&empty), String::from_utf8_lossy(&old_response(vec![], &Meta::v1())));
    }
}
