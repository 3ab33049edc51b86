//! `POST /ops`: parsing the envelope, then running queries, writes and pulls.
//!
//! Order: the reads before the request's first write see the state before it; all of the
//! request's writes are then applied under the writer lock and committed in one durable
//! transaction; the reads after the first write see the state after the commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use atoma::JsonRecord;
use atoma::core::{Entry, Filter, Page, Table};
use atoma::protocol::{
    Change, Current, Meta, PROTOCOL_VERSION, PullRequest, PullResult, QueryRequest, StandardError, Stored, Warning,
    WireWriteEntry, WriteItemResult, WriteRequest, WriteResult, apply_entry, entry_target, valid_resource,
    with_version,
};
use axum::http::StatusCode;
use serde_json::{Map, Value as Json};

use crate::config::Limits;
use crate::error::{access_denied, err, invalid_request, status_of};
use crate::state::{Notice, Right, ServerState};
use crate::storage::{CommitBatch, LogEntry, Replay};
use crate::wire::{PullOut, QueryOut, ResultsWriter, WriteOut, encode};

/// One op's payload, parsed.
#[derive(Debug, PartialEq)]
pub(crate) enum Payload {
    Query(QueryRequest),
    Write(WriteRequest),
    Pull(PullRequest),
}

#[derive(Debug, PartialEq)]
pub(crate) struct ParsedOp {
    pub(crate) op_id: String,
    pub(crate) payload: Result<Payload, StandardError>,
}

/// Trace ids from the request headers (used when `meta` has none).
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderTrace {
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn invalid_body(message: impl Into<String>) -> StandardError {
    err("INVALID_BODY", atoma::protocol::ErrorKind::Validation, message)
}

fn limits_error(code: &str, message: impl Into<String>) -> StandardError {
    err(code, atoma::protocol::ErrorKind::Limits, message)
}

/// Parses the body: request-level problems are errors, op payload problems are per-op.
///
/// The typed fast path ([`crate::wire::fast_parse`]) answers for a request without any
/// problem; everything else goes through the reference decoder below, which reads the body
/// as a `Value` tree and builds the exact errors.
pub(crate) fn parse(body: &[u8], limits: &Limits) -> Result<(Meta, Vec<ParsedOp>), StandardError> {
    match crate::wire::fast_parse(body, limits) {
        Some(parsed) => Ok(parsed),
        None => parse_reference(body, limits),
    }
}

/// The reference decoder: the body as a `Value` tree, then each op from it.
pub(crate) fn parse_reference(body: &[u8], limits: &Limits) -> Result<(Meta, Vec<ParsedOp>), StandardError> {
    let value: Json =
        serde_json::from_slice(body).map_err(|e| invalid_body(format!("the body is not valid JSON: {e}")))?;
    let Json::Object(mut root) = value else {
        return Err(invalid_body("the body must be a JSON object `{ \"meta\": {...}, \"ops\": [...] }`"));
    };
    let meta = match root.remove("meta") {
        None | Some(Json::Null) => Meta::v1(),
        Some(m @ Json::Object(_)) => {
            serde_json::from_value::<Meta>(m).map_err(|e| invalid_request(format!("`meta`: {e}")))?
        }
        Some(_) => return Err(invalid_request("`meta` must be an object")),
    };
    if meta.v != PROTOCOL_VERSION {
        return Err(invalid_request(format!(
            "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
            meta.v
        )));
    }
    let ops = match root.remove("ops") {
        Some(Json::Array(ops)) => ops,
        Some(_) => return Err(invalid_request("`ops` must be a list")),
        None => return Err(invalid_request("`ops` is required")),
    };
    if ops.len() > limits.max_ops {
        return Err(limits_error(
            "TOO_MANY_OPS",
            format!("{} ops in one request; the limit is {}", ops.len(), limits.max_ops),
        )
        .with_details(serde_json::json!({ "limit": limits.max_ops, "got": ops.len() })));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let Json::Object(mut op) = op else { return Err(invalid_request(format!("ops[{i}] must be an object"))) };
        let op_id = match op.remove("opId") {
            Some(Json::String(s)) if !s.is_empty() => s,
            _ => return Err(invalid_request(format!("ops[{i}].opId must be a non-empty string"))),
        };
        if !seen.insert(op_id.clone()) {
            return Err(invalid_request(format!("opId {op_id:?} appears twice; op ids must be unique in a request"))
                .with_details(serde_json::json!({ "opId": op_id })));
        }
        let kind = match op.remove("kind") {
            Some(Json::String(s)) => s,
            _ => return Err(invalid_request(format!("op {op_id:?}: `kind` must be a string"))),
        };
        match op.remove("meta") {
            None | Some(Json::Null) => {}
            Some(m @ Json::Object(_)) => {
                serde_json::from_value::<Meta>(m).map_err(|e| invalid_request(format!("op {op_id:?}: `meta`: {e}")))?;
            }
            Some(_) => return Err(invalid_request(format!("op {op_id:?}: `meta` must be an object"))),
        }
        let payload = match kind.as_str() {
            "query" => parse_payload(&mut op, "query", &op_id).and_then(|v| {
                serde_json::from_value(v)
                    .map(Payload::Query)
                    .map_err(|e| StandardError::invalid_query(format!("op {op_id:?}: {e}")))
            }),
            "write" => parse_payload(&mut op, "write", &op_id).and_then(|v| {
                if let Some(Json::Array(entries)) = v.get("entries")
                    && entries.len() > limits.max_entries
                {
                    return Err(limits_error(
                        "TOO_MANY_ITEMS",
                        format!(
                            "op {op_id:?}: {} entries in one write; the limit is {}",
                            entries.len(),
                            limits.max_entries
                        ),
                    )
                    .with_details(serde_json::json!({ "limit": limits.max_entries, "got": entries.len() })));
                }
                serde_json::from_value(v)
                    .map(Payload::Write)
                    .map_err(|e| StandardError::invalid_write(format!("op {op_id:?}: {e}")))
            }),
            "changes.pull" => parse_payload(&mut op, "pull", &op_id).and_then(|v| {
                serde_json::from_value(v).map(Payload::Pull).map_err(|e| invalid_request(format!("op {op_id:?}: {e}")))
            }),
            other => {
                return Err(invalid_request(format!(
                    "op {op_id:?}: unknown kind {other:?} (expected query, write or changes.pull)"
                ))
                .with_details(serde_json::json!({ "opId": op_id, "kind": other })));
            }
        };
        out.push(ParsedOp { op_id, payload });
    }
    Ok((meta, out))
}

fn parse_payload(op: &mut Map<String, Json>, field: &str, op_id: &str) -> Result<Json, StandardError> {
    match op.remove(field) {
        Some(v @ Json::Object(_)) => Ok(v),
        Some(_) => Err(invalid_request(format!("op {op_id:?}: `{field}` must be an object"))),
        None => Err(invalid_request(format!("op {op_id:?}: `{field}` is required"))),
    }
}

/// The state of one request's writes before they commit.
#[derive(Default)]
struct WriteCtx {
    /// Records written earlier in this request (`None`: deleted).
    overlay: HashMap<(String, String), Option<Stored>>,
    /// Idempotency results applied earlier in this request.
    replays: HashMap<String, WriteItemResult>,
    /// The table entries to apply after the commit.
    entries: Vec<(String, String, Option<Entry<JsonRecord>>)>,
    batch: CommitBatch,
    head: u64,
    now: i64,
    ttl_ms: i64,
}

fn replay_key(resource: &str, principal: &str, key: &str) -> String {
    format!("{resource}\u{0}{principal}\u{0}{key}")
}

fn owner_of<'a>(value: &'a Map<String, Json>, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Json::as_str)
}

impl ServerState {
    /// Runs one `POST /ops` body for `principal`: the status and the response body (JSON).
    pub(crate) fn handle_ops(&self, principal: &str, body: &[u8], trace: HeaderTrace) -> (StatusCode, Vec<u8>) {
        let (meta, ops) = match parse(body, &self.config.limits) {
            Ok(p) => p,
            Err(e) => return error_body(e),
        };
        let mut warnings = Vec::new();
        // Answers are usually about as large as the request, or larger.
        let mut out = ResultsWriter::new(body.len().saturating_mul(2).clamp(256, 1 << 22));
        self.execute(principal, ops, &mut warnings, &mut out);
        let meta = Meta {
            v: PROTOCOL_VERSION,
            trace_id: meta.trace_id.or(trace.trace_id),
            request_id: meta.request_id.or(trace.request_id),
            server_time_ms: Some(now_ms()),
            warnings,
            ..Meta::default()
        };
        (StatusCode::OK, out.finish(&meta))
    }

    /// Runs the ops and writes one result per op, in op order. The reads before the first write
    /// run first, then every write (one commit), then the reads after the first write.
    fn execute(&self, principal: &str, mut ops: Vec<ParsedOp>, warnings: &mut Vec<Warning>, out: &mut ResultsWriter) {
        let first_write = ops.iter().position(|o| matches!(o.payload, Ok(Payload::Write(_)))).unwrap_or(ops.len());
        for op in &mut ops[..first_write] {
            self.read(principal, op, warnings, out);
        }
        if first_write == ops.len() {
            return;
        }
        let reqs: Vec<&WriteRequest> = ops[first_write..]
            .iter()
            .filter_map(|o| match &o.payload {
                Ok(Payload::Write(w)) => Some(w),
                _ => None,
            })
            .collect();
        let mut written = self.run_writes(principal, &reqs).into_iter();
        drop(reqs);
        for op in &mut ops[first_write..] {
            if matches!(op.payload, Ok(Payload::Write(_))) {
                match written.next() {
                    Some(Ok(w)) => out.ok_with(&op.op_id, |buf| encode(buf, &WriteOut(&w))),
                    Some(Err(e)) => out.err(&op.op_id, &e),
                    None => out.err(&op.op_id, &StandardError::internal("the op was not run")),
                }
            } else {
                self.read(principal, op, warnings, out);
            }
        }
    }

    /// Runs a query or a pull (or reports the op's decoding error) and writes its result.
    fn read(&self, principal: &str, op: &mut ParsedOp, warnings: &mut Vec<Warning>, out: &mut ResultsWriter) {
        match &mut op.payload {
            Err(e) => out.err(&op.op_id, e),
            Ok(Payload::Query(q)) => {
                let op_id = &op.op_id;
                let ran = self.run_query(principal, q, warnings, |page| out.ok_with(op_id, |buf| encode(buf, &page)));
                if let Err(e) = ran {
                    out.err(op_id, &e);
                }
            }
            Ok(Payload::Pull(p)) => match self.run_pull(principal, p, warnings) {
                Ok(r) => out.ok_with(&op.op_id, |buf| encode(buf, &PullOut(&r))),
                Err(e) => out.err(&op.op_id, &e),
            },
            Ok(Payload::Write(_)) => out.err(&op.op_id, &StandardError::internal("the op was not run")),
        }
    }

    /// Runs a query and hands its page to `emit` while the tables are still locked (the
    /// records are encoded from the table, not copied).
    fn run_query(
        &self,
        principal: &str,
        req: &mut QueryRequest,
        warnings: &mut Vec<Warning>,
        emit: impl FnOnce(QueryOut<'_>),
    ) -> Result<(), StandardError> {
        if !valid_resource(&req.resource) {
            return Err(StandardError::invalid_query(format!(
                "resource {:?} must match [A-Za-z0-9_.-]{{1,64}}",
                req.resource
            )));
        }
        let rc = self.authorize(principal, &req.resource, Right::Read)?;
        let limits = &self.config.limits;
        let query = &mut req.query;
        let page = query.page.get_or_insert(Page::Offset { limit: None, offset: None, include_total: None });
        let (Page::Offset { limit, .. } | Page::Cursor { limit, .. }) = page;
        match limit {
            None => *limit = Some(limits.default_query_limit),
            Some(l) if *l > limits.max_query_limit => {
                warnings.push(Warning {
                    code: "LIMIT_CLAMPED".into(),
                    message: format!("query limit {l} was clamped to {}", limits.max_query_limit),
                    details: Some(serde_json::json!({ "resource": req.resource, "limit": limits.max_query_limit })),
                });
                *limit = Some(limits.max_query_limit);
            }
            Some(_) => {}
        }
        if let Some(of) = rc.and_then(|r| r.owner_field.as_ref()) {
            let mine = Filter::Eq { field: of.clone(), value: Json::String(principal.to_owned()) };
            query.filter = Some(match query.filter.take() {
                None => mine,
                Some(f) => Filter::And { args: vec![mine, f] },
            });
        }
        let compiled = query.compile().map_err(|e| StandardError::invalid_query(e.to_string()))?;
        let tables = self.tables();
        let empty;
        let table = match tables.get(&req.resource) {
            Some(t) => t,
            None => {
                empty = Table::<JsonRecord>::new([]);
                &empty
            }
        };
        let page = table.query(&compiled).map_err(|e| StandardError::invalid_query(e.to_string()))?;
        emit(QueryOut { items: &page.items, page_info: Some(&page.page_info) });
        Ok(())
    }

    fn run_pull(
        &self,
        principal: &str,
        req: &PullRequest,
        warnings: &mut Vec<Warning>,
    ) -> Result<PullResult, StandardError> {
        let cursor = parse_cursor(&req.cursor)?;
        let max = self.config.limits.max_pull_limit;
        let limit = match req.limit {
            None => max,
            Some(l) if l > max => {
                warnings.push(Warning {
                    code: "LIMIT_CLAMPED".into(),
                    message: format!("pull limit {l} was clamped to {max}"),
                    details: Some(serde_json::json!({ "limit": max })),
                });
                max
            }
            Some(l) => l,
        };
        let only: Option<HashSet<&str>> = match &req.resources {
            None => None,
            Some(list) => {
                for r in list {
                    if !valid_resource(r) {
                        return Err(invalid_request(format!("resource {r:?} must match [A-Za-z0-9_.-]{{1,64}}")));
                    }
                    self.authorize(principal, r, Right::Read)?;
                }
                Some(list.iter().map(String::as_str).collect())
            }
        };
        let mut keep = |e: &LogEntry| {
            only.as_ref().is_none_or(|o| o.contains(e.resource.as_str()))
                && self.visible(principal, &e.resource, e.owner.as_deref())
        };
        let page = self.storage.changes_after(cursor, limit as usize, &mut keep).map_err(|e| e.to_standard())?;
        Ok(PullResult {
            next_cursor: page.last_seen.max(cursor).to_string(),
            changes: page
                .entries
                .into_iter()
                .map(|e| Change {
                    resource: e.resource,
                    entity_id: e.entity_id,
                    kind: e.kind,
                    version: e.version,
                    changed_at_ms: e.changed_at_ms,
                    value: e.value,
                })
                .collect(),
        })
    }

    /// Applies every write op of a request under the writer lock and commits them in one
    /// transaction. One result per op.
    fn run_writes(&self, principal: &str, reqs: &[&WriteRequest]) -> Vec<Result<WriteResult, StandardError>> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl_days = i64::try_from(self.config.limits.idempotency_ttl_days).unwrap_or(36_500);
        let mut ctx = WriteCtx {
            head: self.head.load(Ordering::SeqCst),
            now: now_ms(),
            ttl_ms: ttl_days.saturating_mul(86_400_000),
            ..WriteCtx::default()
        };
        let mut out = Vec::with_capacity(reqs.len());
        {
            let tables = self.tables();
            for req in reqs {
                out.push(self.write_op(principal, req, &tables, &mut ctx));
            }
        }
        if ctx.batch.records.is_empty() && ctx.batch.replays.is_empty() {
            return out;
        }
        ctx.batch.prune_replays_before_ms = Some(ctx.now.saturating_sub(ctx.ttl_ms));
        if let Err(e) = self.storage.commit(&ctx.batch) {
            let e = e.to_standard();
            return out.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        {
            let mut tables = self.tables_mut();
            for (resource, id, entry) in ctx.entries {
                let table = match tables.get_mut(&resource) {
                    Some(t) => t,
                    None => tables.entry(resource.clone()).or_insert_with(|| self.new_table(&resource)),
                };
                table.apply([(id, entry)]);
            }
        }
        if !ctx.batch.changes.is_empty() {
            self.head.store(ctx.head, Ordering::SeqCst);
            let mut touched: Vec<(String, Option<String>)> =
                ctx.batch.changes.iter().map(|c| (c.resource.clone(), c.owner.clone())).collect();
            touched.sort();
            touched.dedup();
            // No subscribers is not an error.
            let _ = self.notices.send(Arc::new(Notice { cursor: ctx.head, touched }));
        }
        out
    }

    fn write_op(
        &self,
        principal: &str,
        req: &WriteRequest,
        tables: &HashMap<String, Table<JsonRecord>>,
        ctx: &mut WriteCtx,
    ) -> Result<WriteResult, StandardError> {
        if !valid_resource(&req.resource) {
            return Err(StandardError::invalid_write(format!(
                "resource {:?} must match [A-Za-z0-9_.-]{{1,64}}",
                req.resource
            )));
        }
        if req.entries.len() > self.config.limits.max_entries {
            return Err(limits_error(
                "TOO_MANY_ITEMS",
                format!("{} entries in one write; the limit is {}", req.entries.len(), self.config.limits.max_entries),
            ));
        }
        let rc = self.authorize(principal, &req.resource, Right::Write)?;
        let can_read = self.authorize(principal, &req.resource, Right::Read).is_ok();
        let owner_field = rc.and_then(|r| r.owner_field.as_deref());
        let results = req
            .entries
            .iter()
            .map(|e| self.write_entry(principal, &req.resource, e, owner_field, can_read, tables, ctx))
            .collect();
        Ok(WriteResult { transaction_applied: Some(true), results })
    }

    #[expect(clippy::too_many_arguments, reason = "one entry needs the op's whole context")]
    fn write_entry(
        &self,
        principal: &str,
        resource: &str,
        e: &WireWriteEntry,
        owner_field: Option<&str>,
        can_read: bool,
        tables: &HashMap<String, Table<JsonRecord>>,
        ctx: &mut WriteCtx,
    ) -> WriteItemResult {
        let fail = |error, current| WriteItemResult::err(e.entry_id.clone(), error, current);
        if e.item.meta.idempotency_key.is_empty() {
            return fail(StandardError::invalid_write("`item.meta.idempotencyKey` must not be empty"), None);
        }
        let key = replay_key(resource, principal, &e.item.meta.idempotency_key);
        if let Some(r) = ctx.replays.get(&key) {
            return WriteItemResult { entry_id: e.entry_id.clone(), ..r.clone() };
        }
        match self.storage.replay(&key) {
            Ok(Some(r)) if ctx.now.saturating_sub(r.at_ms) <= ctx.ttl_ms => {
                return WriteItemResult { entry_id: e.entry_id.clone(), ..r.result };
            }
            Ok(_) => {}
            Err(err) => return fail(err.to_standard(), None),
        }
        let table = tables.get(resource);
        let lookup = |id: &str| -> Option<Stored> {
            match ctx.overlay.get(&(resource.to_owned(), id.to_owned())) {
                Some(s) => s.clone(),
                None => table
                    .and_then(|t| t.entry(&id.to_owned()))
                    .map(|en| Stored { value: en.record.body().clone(), version: en.version }),
            }
        };
        let cur = entry_target(e).and_then(|id| lookup(&id));
        if let (Some(of), Some(c)) = (owner_field, &cur)
            && owner_of(&c.value, of) != Some(principal)
        {
            return fail(access_denied(format!("this record of {resource} belongs to another principal")), None);
        }
        let fresh = || {
            let base = format!("{:012x}{:06x}", ctx.now, ctx.head + 1);
            let taken = |id: &str| match ctx.overlay.get(&(resource.to_owned(), id.to_owned())) {
                Some(s) => s.is_some(),
                None => table.is_some_and(|t| t.contains(&id.to_owned())),
            };
            let mut id = base.clone();
            let mut n = 0u32;
            while taken(&id) {
                n += 1;
                id = format!("{base}-{n}");
            }
            id
        };
        let mut applied = match apply_entry(e, cur.as_ref(), fresh) {
            Ok(a) => a,
            Err((error, current)) => {
                let current = if can_read { current } else { current.map(|c| Current { value: None, ..c }) };
                return fail(error, current);
            }
        };
        if let (Some(of), Some(next)) = (owner_field, applied.next.as_mut()) {
            match next.value.get(of) {
                None | Some(Json::Null) => {
                    next.value.insert(of.to_owned(), Json::String(principal.to_owned()));
                }
                Some(Json::String(o)) if o == principal => {}
                Some(_) => {
                    return fail(
                        access_denied(format!("`{of}` of a {resource} record must be the writer ({principal})")),
                        None,
                    );
                }
            }
        }
        let entry = match &applied.next {
            Some(n) => match JsonRecord::new(n.value.clone()) {
                Ok(r) => Some(Entry::new(r, n.version)),
                Err(err) => return fail(StandardError::invalid_write(err.to_string()), None),
            },
            None => None,
        };
        let owner = owner_field
            .and_then(|of| applied.next.as_ref().or(cur.as_ref()).and_then(|s| owner_of(&s.value, of)))
            .map(str::to_owned);
        let (kind, version, value) = match &applied.next {
            Some(n) => (atoma::protocol::ChangeKind::Upsert, n.version, Some(with_version(n.value.clone(), n.version))),
            None => (atoma::protocol::ChangeKind::Delete, cur.as_ref().map_or(0, |c| c.version) + 1, None),
        };
        ctx.head += 1;
        ctx.batch.changes.push(LogEntry {
            seq: ctx.head,
            resource: resource.to_owned(),
            entity_id: applied.id.clone(),
            kind,
            version,
            changed_at_ms: ctx.now,
            value: value.clone(),
            owner,
        });
        ctx.overlay.insert((resource.to_owned(), applied.id.clone()), applied.next.clone());
        ctx.batch.records.push((resource.to_owned(), applied.id.clone(), applied.next.clone()));
        ctx.entries.push((resource.to_owned(), applied.id.clone(), entry));
        let returning = e.options.as_ref().and_then(|o| o.returning) == Some(true);
        let data = value.filter(|_| returning && can_read);
        let result =
            WriteItemResult::ok(e.entry_id.clone(), applied.id, applied.next.as_ref().map(|n| n.version), data);
        ctx.replays.insert(key.clone(), result.clone());
        ctx.batch.replays.push((key, Replay { result: result.clone(), at_ms: ctx.now }));
        result
    }
}

fn parse_cursor(cursor: &str) -> Result<u64, StandardError> {
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_request(format!(
            "cursor {cursor:?} is not a cursor of this server (\"0\" is the beginning)"
        )));
    }
    cursor.parse().map_err(|_| invalid_request(format!("cursor {cursor:?} is out of range")))
}

/// A request-level error: its status and the envelope `{ ok: false, error, meta: { v: 1 } }`.
pub(crate) fn error_response(e: StandardError) -> (StatusCode, Json) {
    let status = status_of(&e.code);
    (status, serde_json::json!({ "ok": false, "error": e, "meta": Meta::v1() }))
}

/// [`error_response`], encoded.
fn error_body(e: StandardError) -> (StatusCode, Vec<u8>) {
    let (status, body) = error_response(e);
    match serde_json::to_vec(&body) {
        Ok(bytes) => (status, bytes),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":{"code":"INTERNAL","kind":"internal","message":"encoding the response failed"},"meta":{"v":1},"ok":false}"#.to_vec(),
        ),
    }
}
