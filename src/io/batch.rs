//! The batch engine (seed 000): many small queries and writes become few `POST /ops` requests.
//!
//! - **Two lanes.** The query lane sends FIFO contiguous segments of queries, never mixing
//!   traced and untraced tasks in one request. The write lane keeps buckets by (action,
//!   resource) and drains them round-robin, so one hot bucket cannot starve the others.
//! - **Coalesced flush.** Enqueues wait for a flush: the end of the frame (`end_frame`, called
//!   by the plugin's `Flush` system), or `flush_interval` after the first enqueue. A lane whose
//!   queue reaches `max_ops_per_request` flushes at once. A finished request frees its slot
//!   for queries a flush released, not for ones queued since: a frame's queries go in full
//!   requests however fast the answers come back.
//! - **Backpressure.** `max_queue_length` globally or per lane; a full query lane rejects the
//!   new query or drops the oldest one; a full write lane rejects the new write.
//! - **Concurrency.** `query_max_in_flight` / `write_max_in_flight` requests per lane.
//! - **Slicing.** At most `max_ops_per_request` ops per request and `max_batch_size` entries
//!   per write op.
//! - **Tracing.** Trace headers and `meta.traceId` only when every task of a request shares
//!   one non-empty trace id; otherwise the events say `mixed_trace`.
//! - **Events.** Request / response events per emitter, with the emitter's and the request's op
//!   counts.
//! - **Retry** with exponential backoff and jitter, for retryable failures only.
//! - **Dispose** aborts requests in flight and fails their tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use super::executor::BoxFuture;
use crate::core::{Query, WriteAction};
use crate::protocol::{
    Meta, OpBody, OpResult, OpsRequest, OpsResponse, QueryRequest, QueryResult, RawOpsResponse, StandardError,
    WireWriteEntry, WriteItemResult, WriteRequest, WriteResult,
};
use serde_json::value::RawValue;

/// Sends one `POST /ops` request.
pub trait Transport: Send + Sync + 'static {
    /// Sends a request; `trace` is set when every op shares one trace id (then it goes into the
    /// `x-atoma-trace-id` / `x-atoma-request-id` headers too).
    fn send(&self, req: OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<OpsResponse, StandardError>>;

    /// Like [`Transport::send`], with each op's `data` left as undecoded JSON text for the
    /// caller to decode straight into its type. The engine sends through this, by reference,
    /// so a retry does not copy the request.
    ///
    /// The default clones the request, calls [`Transport::send`] and encodes each op's data
    /// again; a transport that reads JSON (like [`super::HttpTransport`]) should decode the
    /// response straight into a [`RawOpsResponse`] instead.
    fn send_raw(&self, req: &OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<RawOpsResponse, StandardError>> {
        let sent = self.send(req.clone(), trace);
        Box::pin(async move {
            RawOpsResponse::from_tree(sent.await?)
                .map_err(|e| StandardError::internal(format!("re-encoding a response failed: {e}")))
        })
    }
}

/// The trace headers of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// `x-atoma-trace-id`.
    pub trace_id: String,
    /// `x-atoma-request-id`.
    pub request_id: String,
}

/// When enqueued tasks are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// At the end of the frame (the plugin calls `end_frame`): one frame, fewest requests.
    Frame,
    /// This long after the first enqueue (a higher batching rate for standalone use).
    Interval(Duration),
}

/// What a full query lane does with one more query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryOverflow {
    /// The new query fails.
    #[default]
    RejectNew,
    /// The oldest queued query fails, the new one is queued.
    DropOldest,
}

/// Queue limits: global, or per lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Both lanes together.
    pub total: Option<usize>,
    /// The query lane.
    pub query: Option<usize>,
    /// The write lane.
    pub write: Option<usize>,
}

/// Retry with exponential backoff and jitter, for retryable failures only (network errors,
/// 5xx, 429, `retryable: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 4, base: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The delay before retry `n` (0-based): `base · 2ⁿ`, capped, with ±50 % jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.min(16)).min(self.max);
        let jitter = (random() % 1000) as f64 / 1000.0; // 0..1
        exp.mul_f64(0.5 + jitter)
    }
}

fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

/// The batch engine's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// When to send.
    pub flush: FlushMode,
    /// Queue limits.
    pub max_queue_length: QueueLimits,
    /// What a full query lane does.
    pub query_overflow: QueryOverflow,
    /// Query requests in flight at once.
    pub query_max_in_flight: usize,
    /// Write requests in flight at once.
    pub write_max_in_flight: usize,
    /// Ops per request.
    pub max_ops_per_request: usize,
    /// Entries per write op.
    pub max_batch_size: usize,
    /// Write entries per request, all ops together (keeps bodies under the server's limit).
    pub max_request_entries: usize,
    /// Retries.
    pub retry: RetryPolicy,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            flush: FlushMode::Frame,
            max_queue_length: QueueLimits::default(),
            query_overflow: QueryOverflow::RejectNew,
            query_max_in_flight: 2,
            write_max_in_flight: 2,
            max_ops_per_request: 200,
            max_batch_size: 1000,
            max_request_entries: 2000,
            retry: RetryPolicy::default(),
        }
    }
}

/// Which lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Queries.
    Query,
    /// Writes.
    Write,
}

/// What the engine reports, once per emitter per request (fan-out: a request mixing several
/// emitters' tasks reports to each).
#[derive(Clone, Debug, PartialEq)]
pub enum BatchEvent {
    /// A request is being sent.
    Request {
        /// The emitter (a store name, usually).
        emitter: String,
        /// The lane.
        lane: Lane,
        /// This emitter's ops in the request.
        op_count: usize,
        /// This emitter's tasks (write entries, or queries) in the request.
        task_count: usize,
        /// All ops in the request.
        total_op_count: usize,
        /// The shared trace id, when every task had the same one.
        trace_id: Option<String>,
        /// Whether tasks with different (or no) trace ids share the request.
        mixed_trace: bool,
        /// Which attempt this is (0: the first).
        attempt: u32,
    },
    /// A response (or a failure) came back.
    Response {
        /// The emitter.
        emitter: String,
        /// The lane.
        lane: Lane,
        /// This emitter's ops in the request.
        op_count: usize,
        /// Whether the request as a whole succeeded.
        ok: bool,
        /// How long it took.
        duration: Duration,
    },
}

/// Tracing and reporting context of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskContext {
    /// A trace id shared by related tasks.
    pub trace_id: Option<String>,
    /// Who gets the request / response events (`None`: nobody).
    pub emitter: Option<String>,
}

struct QueryTask {
    resource: String,
    query: Query,
    ctx: TaskContext,
    reply: oneshot::Sender<Result<QueryResult, StandardError>>,
}

struct WriteTask {
    resource: String,
    entry: WireWriteEntry,
    ctx: TaskContext,
    reply: oneshot::Sender<Result<WriteItemResult, StandardError>>,
}

type BucketKey = (WriteAction, String);

#[derive(Default)]
struct State {
    queries: VecDeque<QueryTask>,
    /// How many queries at the front of `queries` a flush released (the rest wait for the
    /// next flush, even when a finished request frees a slot): a frame's queries go in full
    /// requests, however fast the answers come back.
    query_released: usize,
    buckets: HashMap<BucketKey, VecDeque<WriteTask>>,
    bucket_order: VecDeque<BucketKey>,
    writes_queued: usize,
    query_in_flight: usize,
    write_in_flight: usize,
    timer_armed: bool,
    tasks: HashMap<u64, tokio::task::AbortHandle>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    config: BatchConfig,
    state: Mutex<State>,
    disposed: AtomicBool,
    /// Set once someone asks for events: until then none are kept (nobody would drain them).
    events: Mutex<Option<(Sender<BatchEvent>, Receiver<BatchEvent>)>>,
    runtime: tokio::runtime::Handle,
    next_request: AtomicU64,
}

/// The batch engine. Clones share one engine.
#[derive(Clone)]
pub struct BatchEngine {
    inner: Arc<Inner>,
}

fn disposed_error() -> StandardError {
    StandardError::adapter("DISPOSED", "the batch engine was disposed; the request was aborted")
}

fn queue_full(lane: &str) -> StandardError {
    StandardError::new(
        "QUEUE_FULL",
        crate::protocol::ErrorKind::Limits,
        format!("the {lane} queue is full; try again later"),
    )
    .retryable()
}

impl BatchEngine {
    /// An engine sending through `transport`, spawning on `runtime`.
    pub fn new(transport: Arc<dyn Transport>, config: BatchConfig, runtime: tokio::runtime::Handle) -> Self {
        let inner = Inner {
            transport,
            config,
            state: Mutex::new(State::default()),
            disposed: AtomicBool::new(false),
            events: Mutex::new(None),
            runtime,
            next_request: AtomicU64::new(1),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Request / response events from now on (each receiver clone sees a share of them: use
    /// one). Until this is first called the engine keeps no events.
    pub fn events(&self) -> Receiver<BatchEvent> {
        let mut ev = self.inner.events.lock().unwrap_or_else(|p| p.into_inner());
        ev.get_or_insert_with(crossbeam_channel::unbounded).1.clone()
    }

    fn send_event(&self, e: BatchEvent) {
        let ev = self.inner.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, _)) = ev.as_ref() {
            let _ = tx.send(e);
        }
    }

    /// The settings.
    pub fn config(&self) -> &BatchConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn total_queued(s: &State) -> usize {
        s.queries.len() + s.writes_queued
    }

    /// Queues a query; the future resolves when its request is answered.
    pub fn enqueue_query(
        &self,
        resource: String,
        query: Query,
        ctx: TaskContext,
    ) -> BoxFuture<Result<QueryResult, StandardError>> {
        let (tx, rx) = oneshot::channel();
        if self.inner.disposed.load(Ordering::Acquire) {
            return Box::pin(async { Err(disposed_error()) });
        }
        let limits = self.inner.config.max_queue_length;
        let mut dropped = None;
        let threshold;
        {
            let mut s = self.lock();
            let full = limits.query.is_some_and(|l| s.queries.len() >= l)
                || limits.total.is_some_and(|l| Self::total_queued(&s) >= l);
            if full {
                match self.inner.config.query_overflow {
                    QueryOverflow::RejectNew => return Box::pin(async { Err(queue_full("query")) }),
                    QueryOverflow::DropOldest => match s.queries.pop_front() {
                        Some(old) => {
                            s.query_released = s.query_released.saturating_sub(1);
                            dropped = Some(old)
                        }
                        None => return Box::pin(async { Err(queue_full("query")) }),
                    },
                }
            }
            s.queries.push_back(QueryTask { resource, query, ctx, reply: tx });
            threshold = s.queries.len().saturating_sub(s.query_released) >= self.inner.config.max_ops_per_request;
        }
        if let Some(old) = dropped {
            let _ = old.reply.send(Err(StandardError::new(
                "DROPPED",
                crate::protocol::ErrorKind::Limits,
                "the query queue was full and this (oldest) query was dropped",
            )));
        }
        self.after_enqueue(threshold);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(disposed_error())) })
    }

    /// Queues write entries of one resource; the future resolves to one result per entry.
    pub fn enqueue_write(&self, req: WriteRequest, ctx: TaskContext) -> BoxFuture<Result<WriteResult, StandardError>> {
        if self.inner.disposed.load(Ordering::Acquire) {
            return Box::pin(async { Err(disposed_error()) });
        }
        let limits = self.inner.config.max_queue_length;
        let mut rxs = Vec::with_capacity(req.entries.len());
        let threshold;
        {
            let mut s = self.lock();
            let n = req.entries.len();
            let full = limits.write.is_some_and(|l| s.writes_queued + n > l)
                || limits.total.is_some_and(|l| Self::total_queued(&s) + n > l);
            if full {
                return Box::pin(async { Err(queue_full("write")) });
            }
            for entry in req.entries {
                let (tx, rx) = oneshot::channel();
                rxs.push((entry.entry_id.clone(), rx));
                let key = (entry.action, req.resource.clone());
                let bucket = s.buckets.entry(key.clone()).or_default();
                if bucket.is_empty() {
                    // A bucket joins the rotation when it gets work (and leaves when drained).
                    s.bucket_order.push_back(key.clone());
                }
                if let Some(b) = s.buckets.get_mut(&key) {
                    b.push_back(WriteTask { resource: req.resource.clone(), entry, ctx: ctx.clone(), reply: tx });
                }
                s.writes_queued += 1;
            }
            threshold = s.writes_queued
                >= self.inner.config.max_ops_per_request * self.inner.config.max_batch_size.max(1)
                || s.bucket_order.len() >= self.inner.config.max_ops_per_request;
        }
        self.after_enqueue(threshold);
        Box::pin(async move {
            let mut results = Vec::with_capacity(rxs.len());
            for (entry_id, rx) in rxs {
                results.push(match rx.await.unwrap_or_else(|_| Err(disposed_error())) {
                    Ok(r) => r,
                    Err(e) => WriteItemResult::err(entry_id, e, None),
                });
            }
            Ok(WriteResult { transaction_applied: None, results })
        })
    }

    fn after_enqueue(&self, threshold: bool) {
        if threshold {
            self.flush();
            return;
        }
        if let FlushMode::Interval(d) = self.inner.config.flush {
            let arm = {
                let mut s = self.lock();
                !std::mem::replace(&mut s.timer_armed, true)
            };
            if arm {
                let this = self.clone();
                self.inner.runtime.spawn(async move {
                    tokio::time::sleep(d).await;
                    this.lock().timer_armed = false;
                    this.flush();
                });
            }
        }
    }

    /// Sends what is queued, as far as the in-flight limits allow (the rest goes as requests
    /// finish). Called at the end of every frame.
    pub fn flush(&self) {
        if self.inner.disposed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut s = self.lock();
            s.query_released = s.queries.len();
        }
        self.send_released();
    }

    /// Sends what earlier flushes released, as far as the in-flight limits allow (called as
    /// requests finish).
    fn send_released(&self) {
        if self.inner.disposed.load(Ordering::Acquire) {
            return;
        }
        loop {
            let mut sent = false;
            if let Some(batch) = self.take_queries() {
                self.send_queries(batch);
                sent = true;
            }
            if let Some(batch) = self.take_writes() {
                self.send_writes(batch);
                sent = true;
            }
            if !sent {
                return;
            }
        }
    }

    /// A FIFO contiguous segment of queries, all traced or all untraced.
    fn take_queries(&self) -> Option<Vec<QueryTask>> {
        let mut s = self.lock();
        if s.query_released == 0
            || s.queries.is_empty()
            || s.query_in_flight >= self.inner.config.query_max_in_flight.max(1)
        {
            return None;
        }
        let traced = s.queries.front().is_some_and(|t| t.ctx.trace_id.as_deref().is_some_and(|t| !t.is_empty()));
        let mut batch = Vec::new();
        let max = self.inner.config.max_ops_per_request.max(1).min(s.query_released);
        while batch.len() < max {
            let Some(front) = s.queries.front() else { break };
            let front_traced = front.ctx.trace_id.as_deref().is_some_and(|t| !t.is_empty());
            if front_traced != traced {
                break;
            }
            if let Some(t) = s.queries.pop_front() {
                batch.push(t);
            }
        }
        s.query_released -= batch.len();
        s.query_in_flight += 1;
        Some(batch)
    }

    /// Write ops taken round-robin from the buckets: one op (up to `max_batch_size` entries)
    /// per bucket per turn.
    fn take_writes(&self) -> Option<Vec<Vec<WriteTask>>> {
        let mut s = self.lock();
        if s.writes_queued == 0 || s.write_in_flight >= self.inner.config.write_max_in_flight.max(1) {
            return None;
        }
        let mut ops: Vec<Vec<WriteTask>> = Vec::new();
        let mut entries = 0usize;
        let room = self.inner.config.max_request_entries.max(1);
        while ops.len() < self.inner.config.max_ops_per_request.max(1) && entries < room {
            let Some(key) = s.bucket_order.pop_front() else { break };
            let max = self.inner.config.max_batch_size.max(1).min(room - entries);
            let Some(bucket) = s.buckets.get_mut(&key) else { continue };
            let n = bucket.len().min(max);
            let op: Vec<WriteTask> = bucket.drain(..n).collect();
            let left = bucket.len();
            if left > 0 {
                s.bucket_order.push_back(key);
            } else {
                s.buckets.remove(&key);
            }
            s.writes_queued -= op.len();
            entries += op.len();
            ops.push(op);
        }
        if ops.is_empty() {
            return None;
        }
        s.write_in_flight += 1;
        Some(ops)
    }

    /// The trace of a request: `Some` when every task shares one non-empty trace id.
    fn trace_of<'a>(mut ids: impl Iterator<Item = Option<&'a str>>) -> (Option<String>, bool) {
        let first = ids.next().flatten().filter(|t| !t.is_empty());
        let mut mixed = false;
        for id in ids {
            if id.filter(|t| !t.is_empty()) != first {
                mixed = true;
            }
        }
        match first {
            Some(t) if !mixed => (Some(t.to_owned()), false),
            Some(_) => (None, true),
            None => (None, mixed),
        }
    }

    fn emit_requests(
        &self,
        lane: Lane,
        per_emitter: &HashMap<String, (usize, usize)>,
        total: usize,
        trace: &Option<String>,
        mixed: bool,
        attempt: u32,
    ) {
        for (emitter, (ops, tasks)) in per_emitter {
            self.send_event(BatchEvent::Request {
                emitter: emitter.clone(),
                lane,
                op_count: *ops,
                task_count: *tasks,
                total_op_count: total,
                trace_id: trace.clone(),
                mixed_trace: mixed,
                attempt,
            });
        }
    }

    fn emit_responses(&self, lane: Lane, per_emitter: &HashMap<String, (usize, usize)>, ok: bool, duration: Duration) {
        for (emitter, (ops, _)) in per_emitter {
            self.send_event(BatchEvent::Response { emitter: emitter.clone(), lane, op_count: *ops, ok, duration });
        }
    }

    fn envelope(&self, ops: Vec<crate::protocol::RemoteOp>, trace: &Option<String>) -> (OpsRequest, Option<TraceIds>) {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let ids = trace.as_ref().map(|t| TraceIds { trace_id: t.clone(), request_id: format!("{t}-{n}") });
        let meta = Meta {
            trace_id: ids.as_ref().map(|i| i.trace_id.clone()),
            request_id: ids.as_ref().map(|i| i.request_id.clone()),
            client_time_ms: Some(crate::protocol::now_ms()),
            ..Meta::v1()
        };
        (OpsRequest { meta, ops }, ids)
    }

    /// Sends with retries; emits events for each attempt.
    async fn send_with_retry(
        &self,
        lane: Lane,
        req: OpsRequest,
        trace: Option<TraceIds>,
        per_emitter: HashMap<String, (usize, usize)>,
        mixed: bool,
    ) -> Result<RawOpsResponse, StandardError> {
        let total = req.ops.len();
        let mut attempt = 0u32;
        loop {
            self.emit_requests(lane, &per_emitter, total, &trace.as_ref().map(|t| t.trace_id.clone()), mixed, attempt);
            let started = Instant::now();
            let r = self.inner.transport.send_raw(&req, trace.clone()).await;
            self.emit_responses(lane, &per_emitter, r.is_ok(), started.elapsed());
            match r {
                Err(e) if e.is_retryable() && attempt < self.inner.config.retry.max_retries => {
                    tokio::time::sleep(self.inner.config.retry.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn spawn_tracked(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let handle = self.inner.runtime.spawn(async move {
            f.await;
            this.lock().tasks.remove(&id);
        });
        let mut s = self.lock();
        // A task that finished before its handle was stored would leave it behind: prune.
        s.tasks.retain(|_, h| !h.is_finished());
        if !handle.is_finished() {
            s.tasks.insert(id, handle.abort_handle());
        }
    }

    fn send_queries(&self, batch: Vec<QueryTask>) {
        let (trace, mixed) = Self::trace_of(batch.iter().map(|t| t.ctx.trace_id.as_deref()));
        let mut per_emitter: HashMap<String, (usize, usize)> = HashMap::new();
        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (i, t) in batch.into_iter().enumerate() {
            if let Some(e) = &t.ctx.emitter {
                // Most queries of a request share an emitter: no key copy for those.
                match per_emitter.get_mut(e) {
                    Some(c) => {
                        c.0 += 1;
                        c.1 += 1;
                    }
                    None => {
                        per_emitter.insert(e.clone(), (1, 1));
                    }
                }
            }
            let op_id = format!("q{i}");
            ops.push(crate::protocol::RemoteOp {
                op_id: op_id.clone(),
                body: OpBody::Query { query: QueryRequest { resource: t.resource, query: t.query } },
                meta: None,
            });
            replies.push((op_id, t.reply));
        }
        let (req, ids) = self.envelope(ops, &trace);
        let this = self.clone();
        self.spawn_tracked(async move {
            let r = this.send_with_retry(Lane::Query, req, ids, per_emitter, mixed).await;
            let mut results = results_by_op(r);
            for (pos, (op_id, reply)) in replies.into_iter().enumerate() {
                let out = match results.as_mut() {
                    Err(e) => Err(e.clone()),
                    Ok(by_op) => match by_op.take(pos, &op_id) {
                        Some(res) if res.ok => match res.data.as_deref().map(decode::<QueryResult>) {
                            Some(Ok(q)) => Ok(q),
                            Some(Err(e)) => Err(StandardError::internal(format!("a query result did not parse: {e}"))),
                            None => Err(StandardError::internal("a query result without data")),
                        },
                        Some(res) => {
                            Err(res.error.unwrap_or_else(|| StandardError::internal("a failed op without an error")))
                        }
                        None => Err(StandardError::internal(format!("the response has no result for op {op_id}"))),
                    },
                };
                let _ = reply.send(out);
            }
            this.lock().query_in_flight -= 1;
            this.send_released();
        });
    }

    fn send_writes(&self, ops_tasks: Vec<Vec<WriteTask>>) {
        let (trace, mixed) = Self::trace_of(ops_tasks.iter().flatten().map(|t| t.ctx.trace_id.as_deref()));
        let mut per_emitter: HashMap<String, (usize, usize)> = HashMap::new();
        let mut ops = Vec::with_capacity(ops_tasks.len());
        let mut replies = Vec::with_capacity(ops_tasks.len());
        for (i, op) in ops_tasks.into_iter().enumerate() {
            let op_id = format!("w{i}");
            let resource = op.first().map(|t| t.resource.clone()).unwrap_or_default();
            let mut emitters: Vec<&String> = op.iter().filter_map(|t| t.ctx.emitter.as_ref()).collect();
            emitters.sort();
            emitters.dedup();
            for e in emitters {
                let c = per_emitter.entry(e.clone()).or_default();
                c.0 += 1;
                c.1 += op.iter().filter(|t| t.ctx.emitter.as_ref() == Some(e)).count();
            }
            // Entry ids are the callers'; several callers' entries can share an op, so the
            // request numbers them afresh and answers are mapped back by that number.
            let entries: Vec<WireWriteEntry> = op
                .iter()
                .enumerate()
                .map(|(j, t)| WireWriteEntry { entry_id: format!("{i}.{j}"), ..t.entry.clone() })
                .collect();
            ops.push(crate::protocol::RemoteOp {
                op_id: op_id.clone(),
                body: OpBody::Write { write: WriteRequest { resource, entries } },
                meta: None,
            });
            replies.push((
                op_id,
                op.into_iter()
                    .enumerate()
                    .map(|(j, t)| (format!("{i}.{j}"), t.entry.entry_id, t.reply))
                    .collect::<Vec<_>>(),
            ));
        }
        let (req, ids) = self.envelope(ops, &trace);
        let this = self.clone();
        self.spawn_tracked(async move {
            let r = this.send_with_retry(Lane::Write, req, ids, per_emitter, mixed).await;
            let mut results = results_by_op(r);
            for (pos, (op_id, entries)) in replies.into_iter().enumerate() {
                let op_result: Result<HashMap<String, WriteItemResult>, StandardError> = match results.as_mut() {
                    Err(e) => Err(e.clone()),
                    Ok(by_op) => match by_op.take(pos, &op_id) {
                        Some(res) if res.ok => match res.data.as_deref().map(decode::<WriteResult>) {
                            Some(Ok(w)) => Ok(w.results.into_iter().map(|r| (r.entry_id.clone(), r)).collect()),
                            Some(Err(e)) => Err(StandardError::internal(format!("a write result did not parse: {e}"))),
                            None => Err(StandardError::internal("a write result without data")),
                        },
                        Some(res) => {
                            Err(res.error.unwrap_or_else(|| StandardError::internal("a failed op without an error")))
                        }
                        None => Err(StandardError::internal(format!("the response has no result for op {op_id}"))),
                    },
                };
                match op_result {
                    Err(e) => {
                        for (_, _, reply) in entries {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    Ok(mut by_entry) => {
                        for (wire_id, entry_id, reply) in entries {
                            let r = match by_entry.remove(&wire_id) {
                                Some(mut r) => {
                                    r.entry_id = entry_id;
                                    Ok(r)
                                }
                                None => Err(StandardError::internal(format!(
                                    "the response has no result for entry {entry_id}"
                                ))),
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
            }
            this.lock().write_in_flight -= 1;
            this.send_released();
        });
    }

    /// Stops the engine: queued tasks fail, requests in flight are aborted and their tasks
    /// fail (no fallback), later enqueues fail at once.
    pub fn dispose(&self) {
        self.inner.disposed.store(true, Ordering::Release);
        let (queries, buckets, tasks) = {
            let mut s = self.lock();
            s.writes_queued = 0;
            s.query_released = 0;
            s.bucket_order.clear();
            (std::mem::take(&mut s.queries), std::mem::take(&mut s.buckets), std::mem::take(&mut s.tasks))
        };
        for (_, t) in tasks {
            t.abort();
        }
        for q in queries {
            let _ = q.reply.send(Err(disposed_error()));
        }
        for (_, b) in buckets {
            for w in b {
                let _ = w.reply.send(Err(disposed_error()));
            }
        }
    }

    /// Whether `dispose` was called.
    pub fn is_disposed(&self) -> bool {
        self.inner.disposed.load(Ordering::Acquire)
    }
}

/// An op's data, decoded straight from its JSON text.
fn decode<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.get())
}

type RawOpResult = OpResult<Box<RawValue>>;

/// A response's results, taken by op id. The protocol answers in op order, so the result at
/// the op's position is tried first; any other order falls back to a lookup by id.
struct ByOp {
    results: Vec<Option<RawOpResult>>,
    /// Built on the first result out of place: op id → position (the last one wins).
    index: Option<HashMap<String, usize>>,
}

impl ByOp {
    fn take(&mut self, pos: usize, op_id: &str) -> Option<RawOpResult> {
        if self.index.is_none()
            && let Some(slot) = self.results.get_mut(pos)
            && slot.as_ref().is_some_and(|r| r.op_id == op_id)
        {
            return slot.take();
        }
        let results = &self.results;
        let index = self.index.get_or_insert_with(|| {
            results.iter().enumerate().filter_map(|(i, r)| r.as_ref().map(|r| (r.op_id.clone(), i))).collect()
        });
        let i = index.remove(op_id)?;
        self.results.get_mut(i).and_then(Option::take)
    }
}

fn results_by_op(r: Result<RawOpsResponse, StandardError>) -> Result<ByOp, StandardError> {
    let resp = r?;
    if !resp.ok {
        return Err(resp.error.unwrap_or_else(|| StandardError::internal("a rejected request without an error")));
    }
    let data = resp.data.ok_or_else(|| StandardError::internal("a response without data"))?;
    Ok(ByOp { results: data.results.into_iter().map(Some).collect(), index: None })
}
