//! The batch engine against the real atoma-server on 127.0.0.1: request counts, backpressure,
//! fairness, in-flight limits, trace rules, missing results, retry, dispose. Where a fault is
//! needed, a wrapper around the real HTTP transport injects it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atoma::core::WriteAction;
use atoma::io::{
    BatchConfig, BatchEngine, BatchEvent, BoxFuture, FlushMode, HttpExecutor, HttpTransport, QueryOverflow,
    QueueLimits, RetryPolicy, TaskContext, TraceIds, Transport,
};
use atoma::prelude::*;
use atoma::protocol::{ItemMeta, OpsRequest, OpsResponse, StandardError, WireWriteEntry, WriteItem, WriteRequest};
use atoma::runtime::Route;
use bevy_ecs::message::Messages;
use common::server::TestServer;
use common::*;

/// The real HTTP transport, with counters and optional faults.
struct Probe {
    inner: HttpTransport,
    sent: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    delay: Duration,
    fail_first: AtomicUsize,
    drop_result: bool,
    seen: std::sync::Mutex<Vec<(OpsRequest, Option<TraceIds>)>>,
}

impl Probe {
    fn new(server: &TestServer) -> Self {
        Probe {
            inner: HttpTransport::new(&server.url, None).expect("client"),
            sent: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            delay: Duration::ZERO,
            fail_first: AtomicUsize::new(0),
            drop_result: false,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// The probe as a transport.
struct Shared(Arc<Probe>);

impl Transport for Shared {
    fn send(&self, req: OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<OpsResponse, StandardError>> {
        let this = self.0.clone();
        Box::pin(async move {
            this.sent.fetch_add(1, Ordering::SeqCst);
            this.seen.lock().expect("lock").push((req.clone(), trace.clone()));
            let now = this.active.fetch_add(1, Ordering::SeqCst) + 1;
            this.max_active.fetch_max(now, Ordering::SeqCst);
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            let failing = this.fail_first.load(Ordering::SeqCst);
            let out = if failing > 0 {
                this.fail_first.store(failing - 1, Ordering::SeqCst);
                Err(StandardError::adapter("NETWORK", "injected: connection reset").retryable())
            } else {
                let mut r = this.inner.send(req, trace).await;
                if this.drop_result
                    && let Ok(resp) = &mut r
                    && let Some(data) = &mut resp.data
                {
                    data.results.pop();
                }
                r
            };
            this.active.fetch_sub(1, Ordering::SeqCst);
            out
        })
    }
}

fn engine(server: &TestServer, probe: Arc<Probe>, config: BatchConfig) -> BatchEngine {
    BatchEngine::new(Arc::new(Shared(probe)), config, server.rt.handle().clone())
}

fn entry(i: usize, id: &str) -> WireWriteEntry {
    WireWriteEntry {
        entry_id: format!("e{i}"),
        action: WriteAction::Create,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: None,
            value: Some(serde_json::json!({ "name": id })),
            ops: None,
            meta: ItemMeta { idempotency_key: format!("k-{id}"), client_time_ms: 1 },
        },
        options: None,
    }
}

fn untraced(emitter: &str) -> TaskContext {
    TaskContext { trace_id: None, emitter: Some(emitter.into()) }
}

#[test]
fn a_thousand_queries_in_one_frame_are_ceil_n_over_max_requests() {
    let server = TestServer::open();
    let probe = Arc::new(Probe::new(&server));
    let config = BatchConfig { max_ops_per_request: 150, query_max_in_flight: 4, ..BatchConfig::default() };
    let engine = engine(&server, probe.clone(), config);
    let events = engine.events();
    let executor = HttpExecutor::with_engine(engine.clone());
    let mut a = app(AtomaPlugin::in_memory().route("server", Route::new(executor)).default_route("server"), |app| {
        app.add_store::<Player>(StoreConfig::default());
    });
    a.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            for i in 0..1000 {
                r.fetch(atoma::Query::filter(field("level").gte(i % 7)), FetchPolicy::NetworkOnly);
            }
        })
        .expect("runs");
    let mut done = 0;
    assert!(run_until(&mut a, |a| {
        done += a
            .world_mut()
            .resource_mut::<Messages<ReadFinished<Player>>>()
            .drain()
            .filter(|r| r.source == atoma::runtime::ReadSource::Remote)
            .count();
        done == 1000
    }));
    assert_eq!(probe.sent.load(Ordering::SeqCst), 1000usize.div_ceil(150), "ceil(1000 / 150) requests");
    let events: Vec<BatchEvent> = events.try_iter().collect();
    let requests: usize = events.iter().filter(|e| matches!(e, BatchEvent::Request { .. })).count();
    assert_eq!(requests, 7, "one request event per request for the one emitter");
    assert!(events.iter().any(
        |e| matches!(e, BatchEvent::Request { emitter, op_count: 150, total_op_count: 150, .. } if emitter == "players")
    ));
}

#[test]
fn backpressure_rejects_new_or_drops_oldest() {
    let server = TestServer::open();
    let probe = Arc::new(Probe::new(&server));
    let limits = QueueLimits { query: Some(3), ..QueueLimits::default() };
    let reject = engine(&server, probe.clone(), BatchConfig { max_queue_length: limits, ..BatchConfig::default() });
    let futs: Vec<_> =
        (0..5).map(|_| reject.enqueue_query("players".into(), atoma::Query::all(), untraced("p"))).collect();
    reject.flush();
    let results: Vec<_> = server.rt.block_on(async { futures_join(futs).await });
    let codes: Vec<Option<String>> = results.iter().map(|r| r.as_ref().err().map(|e| e.code.clone())).collect();
    assert_eq!(codes, [None, None, None, Some("QUEUE_FULL".into()), Some("QUEUE_FULL".into())]);

    let drop = engine(
        &server,
        probe.clone(),
        BatchConfig { max_queue_length: limits, query_overflow: QueryOverflow::DropOldest, ..BatchConfig::default() },
    );
    let futs: Vec<_> =
        (0..5).map(|_| drop.enqueue_query("players".into(), atoma::Query::all(), untraced("p"))).collect();
    drop.flush();
    let results: Vec<_> = server.rt.block_on(async { futures_join(futs).await });
    let codes: Vec<Option<String>> = results.iter().map(|r| r.as_ref().err().map(|e| e.code.clone())).collect();
    assert_eq!(codes, [Some("DROPPED".into()), Some("DROPPED".into()), None, None, None]);

    let writes = engine(
        &server,
        probe,
        BatchConfig {
            max_queue_length: QueueLimits { total: Some(4), ..QueueLimits::default() },
            ..BatchConfig::default()
        },
    );
    let ok = writes.enqueue_write(
        WriteRequest { resource: "w".into(), entries: (0..4).map(|i| entry(i, &format!("a{i}"))).collect() },
        untraced("w"),
    );
    let full = writes.enqueue_write(WriteRequest { resource: "w".into(), entries: vec![entry(9, "b")] }, untraced("w"));
    writes.flush();
    let (ok, full) = server.rt.block_on(async { (ok.await, full.await) });
    assert!(ok.expect("accepted").results.iter().all(|r| r.ok));
    assert_eq!(full.expect_err("full").code, "QUEUE_FULL");
}

async fn futures_join<T>(futs: Vec<BoxFuture<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(futs.len());
    for f in futs {
        out.push(f.await);
    }
    out
}

#[test]
fn a_hot_bucket_cannot_starve_the_others() {
    let server = TestServer::open();
    let probe = Arc::new(Probe::new(&server));
    let config =
        BatchConfig { max_ops_per_request: 2, max_batch_size: 1, write_max_in_flight: 1, ..BatchConfig::default() };
    let e = engine(&server, probe.clone(), config);
    let hot = e.enqueue_write(
        WriteRequest { resource: "hot".into(), entries: (0..40).map(|i| entry(i, &format!("h{i}"))).collect() },
        untraced("hot"),
    );
    let cold =
        e.enqueue_write(WriteRequest { resource: "cold".into(), entries: vec![entry(0, "c0")] }, untraced("cold"));
    e.flush();
    let (hot, cold) = server.rt.block_on(async { (hot.await, cold.await) });
    assert!(hot.expect("hot").results.iter().all(|r| r.ok));
    assert!(cold.expect("cold").results[0].ok);
    let seen = probe.seen.lock().expect("lock");
    assert_eq!(seen.len(), 21, "41 ops, 2 per request");
    let resources = |i: usize| -> Vec<String> {
        seen[i]
            .0
            .ops
            .iter()
            .map(|o| match &o.body {
                atoma::protocol::OpBody::Write { write } => write.resource.clone(),
                _ => String::new(),
            })
            .collect()
    };
    // The 40 hot entries reached the flush threshold and the first request left before the
    // cold entry was queued; from then on the buckets alternate, so cold goes in the next
    // request instead of after all of hot (request 21 without round-robin).
    assert_eq!(resources(0), ["hot", "hot"]);
    assert_eq!(resources(1), ["hot", "cold"], "round-robin");
}

#[test]
fn in_flight_limits_hold() {
    let server = TestServer::open();
    for limit in [1usize, 3] {
        let mut p = Probe::new(&server);
        p.delay = Duration::from_millis(30);
        let probe = Arc::new(p);
        let config = BatchConfig { max_ops_per_request: 1, query_max_in_flight: limit, ..BatchConfig::default() };
        let e = engine(&server, probe.clone(), config);
        let futs: Vec<_> =
            (0..8).map(|_| e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"))).collect();
        e.flush();
        let results = server.rt.block_on(futures_join(futs));
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(probe.max_active.load(Ordering::SeqCst), limit, "at most {limit} in flight, and that many used");
    }
}

#[test]
fn trace_headers_only_when_every_task_shares_one_trace() {
    let server = TestServer::open();
    let probe = Arc::new(Probe::new(&server));
    let e = engine(&server, probe.clone(), BatchConfig::default());
    let events = e.events();
    let traced = |t: &str| TaskContext { trace_id: Some(t.into()), emitter: Some("p".into()) };
    // Same trace: headers and meta.
    let f1: Vec<_> = (0..3).map(|_| e.enqueue_query("players".into(), atoma::Query::all(), traced("t-1"))).collect();
    e.flush();
    server.rt.block_on(futures_join(f1));
    // Two traces in one segment: no headers, mixed_trace.
    let f2 = vec![
        e.enqueue_query("players".into(), atoma::Query::all(), traced("t-1")),
        e.enqueue_query("players".into(), atoma::Query::all(), traced("t-2")),
    ];
    e.flush();
    server.rt.block_on(futures_join(f2));
    // Traced then untraced: never in one request.
    let f3 = vec![
        e.enqueue_query("players".into(), atoma::Query::all(), traced("t-3")),
        e.enqueue_query("players".into(), atoma::Query::all(), untraced("p")),
    ];
    e.flush();
    server.rt.block_on(futures_join(f3));
    let seen = probe.seen.lock().expect("lock");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].1.as_ref().map(|t| t.trace_id.as_str()), Some("t-1"));
    assert_eq!(seen[0].0.meta.trace_id.as_deref(), Some("t-1"));
    assert!(seen[1].1.is_none() && seen[1].0.meta.trace_id.is_none());
    assert_eq!((seen[2].0.ops.len(), seen[3].0.ops.len()), (1, 1), "traced and untraced split");
    // The two split requests fly concurrently: either may reach the probe first.
    let mut last: Vec<Option<&str>> = seen[2..].iter().map(|(_, t)| t.as_ref().map(|t| t.trace_id.as_str())).collect();
    last.sort();
    assert_eq!(last, [None, Some("t-3")]);
    let mixed: Vec<bool> = events
        .try_iter()
        .filter_map(|ev| match ev {
            BatchEvent::Request { mixed_trace, .. } => Some(mixed_trace),
            _ => None,
        })
        .collect();
    assert_eq!(mixed, [false, true, false, false]);
}

#[test]
fn a_missing_result_fails_that_op_with_internal() {
    let server = TestServer::open();
    let mut p = Probe::new(&server);
    p.drop_result = true;
    let e = engine(&server, Arc::new(p), BatchConfig::default());
    let futs: Vec<_> = (0..3).map(|_| e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"))).collect();
    e.flush();
    let r = server.rt.block_on(futures_join(futs));
    assert!(r[0].is_ok() && r[1].is_ok());
    assert_eq!(r[2].as_ref().expect_err("dropped").code, "INTERNAL");
}

#[test]
fn retryable_failures_are_retried_and_client_errors_are_not() {
    let server = TestServer::open();
    let p = Probe::new(&server);
    p.fail_first.store(2, Ordering::SeqCst);
    let probe = Arc::new(p);
    let config = BatchConfig {
        retry: RetryPolicy { max_retries: 3, base: Duration::from_millis(5), max: Duration::from_millis(50) },
        ..BatchConfig::default()
    };
    let e = engine(&server, probe.clone(), config.clone());
    let f = e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"));
    e.flush();
    assert!(server.rt.block_on(f).is_ok());
    assert_eq!(probe.sent.load(Ordering::SeqCst), 3, "two injected failures, then success");

    // A 401 from a server with auth: not retried.
    let authed = TestServer::start("[[tokens]]\ntoken = \"t\"\nprincipal = \"p\"\n", None);
    let probe = Arc::new(Probe::new(&authed));
    let e = engine(&authed, probe.clone(), config);
    let f = e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"));
    e.flush();
    assert_eq!(authed.rt.block_on(f).expect_err("unauthorized").code, "UNAUTHORIZED");
    assert_eq!(probe.sent.load(Ordering::SeqCst), 1);
}

#[test]
fn dispose_aborts_in_flight_requests_and_fails_their_tasks() {
    let server = TestServer::open();
    let mut p = Probe::new(&server);
    p.delay = Duration::from_secs(5);
    let probe = Arc::new(p);
    let e = engine(
        &server,
        probe.clone(),
        BatchConfig {
            flush: FlushMode::Frame,
            query_max_in_flight: 1,
            max_ops_per_request: 1,
            ..BatchConfig::default()
        },
    );
    let in_flight = e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"));
    let queued = e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"));
    e.flush();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(probe.active.load(Ordering::SeqCst), 1);
    let started = std::time::Instant::now();
    e.dispose();
    let (a, b) = server.rt.block_on(async { (in_flight.await, queued.await) });
    assert!(started.elapsed() < Duration::from_secs(1), "aborted, not waited for");
    assert_eq!(a.expect_err("aborted").code, "DISPOSED");
    assert_eq!(b.expect_err("never sent").code, "DISPOSED");
    let late = e.enqueue_query("players".into(), atoma::Query::all(), untraced("p"));
    assert_eq!(server.rt.block_on(late).expect_err("disposed").code, "DISPOSED");
}

#[test]
fn callers_entry_ids_may_repeat_and_large_frames_are_split() {
    let server = TestServer::open();
    let probe = Arc::new(Probe::new(&server));
    let config = BatchConfig { max_request_entries: 2000, ..BatchConfig::default() };
    let e = engine(&server, probe.clone(), config);
    // Two callers both name their entry "e0" and land in one op.
    let a = e.enqueue_write(WriteRequest { resource: "dup".into(), entries: vec![entry(0, "A")] }, untraced("w"));
    let b = e.enqueue_write(WriteRequest { resource: "dup".into(), entries: vec![entry(0, "B")] }, untraced("w"));
    // 5,000 entries in one frame: split into requests of at most 2,000.
    let big = e.enqueue_write(
        WriteRequest { resource: "big".into(), entries: (0..5000).map(|i| entry(i, &format!("x{i}"))).collect() },
        untraced("w"),
    );
    e.flush();
    let (a, b, big) = server.rt.block_on(async { (a.await, b.await, big.await) });
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!((a.results[0].entry_id.as_str(), a.results[0].entity_id.as_deref()), ("e0", Some("A")));
    assert_eq!((b.results[0].entry_id.as_str(), b.results[0].entity_id.as_deref()), ("e0", Some("B")));
    assert!(big.expect("big").results.iter().all(|r| r.ok));
    let sizes: Vec<usize> = probe
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(req, _)| {
            req.ops
                .iter()
                .map(|o| match &o.body {
                    atoma::protocol::OpBody::Write { write } => write.entries.len(),
                    _ => 0,
                })
                .sum()
        })
        .collect();
    assert!(sizes.iter().all(|n| *n <= 2000), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 5002);
}
