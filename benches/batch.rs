//! Batch-engine and server benchmark, against a real atoma-server on 127.0.0.1 with redb
//! storage in a fresh temp folder (every write commits durably before its response).
//!
//! - **(a) Batching.** 10,000 small ops through one [`BatchEngine`] over [`HttpTransport`]
//!   (enqueue all, `flush()`, await all; default [`BatchConfig`]: 200 ops per request, 1000
//!   entries per write op, 2 requests in flight per lane) beside the same 10,000 ops sent one
//!   request per op (`HttpTransport::send` with a one-op `OpsRequest`), with as many requests
//!   in flight as the engine's lane allows (2) — and, to show that concurrency does not
//!   rescue it, 8. Two kinds of op: queries by id (`id == "s<n>"`, over 10,000 seeded
//!   records) and small writes (creates of tiny records with unique ids and idempotency
//!   keys). Target: the engine ≥ 10× the ops/s of one request per op.
//! - **(b) Server write throughput.** Requests of one write op with 100 create entries each,
//!   from 1, 2 and 4 concurrent clients. Target: ≥ 20,000 durable ops/s.
//!
//! Each workload is a criterion group (`iter_custom`, one iteration = one whole workload of
//! the criterion size below), and besides criterion every workload is timed at full size with
//! `Instant` (median of several runs); a summary table with ops/s, request counts, the CPU
//! time per op of the server's and the client's threads (from `/proc/self/task/*/stat`: a
//! figure that other load on the machine does not inflate the way it inflates wall time) and
//! the ratios against the targets is printed at the end.
//!
//! One request per op delivers typed results too (`QueryResult` / `WriteResult`), as the engine
//! does, and both paths check every answer.
//!
//! Environment:
//! - `ATOMA_BENCH_QUICK=1` shrinks every size for a smoke run;
//! - `ATOMA_BENCH_OPS` sets the op count of (a) (default 10,000);
//! - `ATOMA_BENCH_REPS` sets the summary runs per row (default 3);
//! - `ATOMA_BENCH_ONLY='queries|server: '` runs only the summary rows whose names contain one
//!   of the `|`-separated parts.
//!
//! Criterion takes its usual filter argument: `cargo bench --bench batch -- none` matches no
//! group and prints the summary only. See docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atoma::core::{Query, WriteAction, field};
use atoma::io::{BatchConfig, BatchEngine, BoxFuture, HttpTransport, TaskContext, TraceIds, Transport};
use atoma::protocol::{
    ItemMeta, Meta, OpBody, OpsRequest, OpsResponse, QueryRequest, QueryResult, RawOpsResponse, RemoteOp,
    StandardError, WireWriteEntry, WriteItem, WriteRequest, WriteResult,
};
use atoma_server::{RunningServer, Server, ServerConfig};
use criterion::{Criterion, SamplingMode, Throughput};

// ---------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Ops of workload (a), in the summary.
    ops: usize,
    /// Ops of workload (a) per criterion iteration.
    crit_ops: usize,
    /// Ops of the one-request-per-op writes per criterion iteration (each a durable commit).
    crit_per_op_writes: usize,
    /// Entries of workload (b), in the summary.
    server_entries: usize,
    /// Entries of workload (b) per criterion iteration.
    crit_server_entries: usize,
    /// Summary runs per row (the median is reported).
    reps: usize,
    /// Records seeded for the queries by id.
    seeded: usize,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok())
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("ATOMA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let base = if quick {
            Sizes {
                ops: 1_000,
                crit_ops: 500,
                crit_per_op_writes: 100,
                server_entries: 5_000,
                crit_server_entries: 2_000,
                reps: 1,
                seeded: 1_000,
            }
        } else {
            Sizes {
                ops: 10_000,
                crit_ops: 10_000,
                crit_per_op_writes: 1_000,
                server_entries: 50_000,
                crit_server_entries: 10_000,
                reps: 3,
                seeded: 10_000,
            }
        };
        let ops = env_usize("ATOMA_BENCH_OPS").unwrap_or(base.ops).max(1);
        Sizes {
            ops,
            crit_ops: base.crit_ops.min(ops),
            crit_per_op_writes: base.crit_per_op_writes.min(ops),
            seeded: base.seeded.max(ops),
            reps: env_usize("ATOMA_BENCH_REPS").unwrap_or(base.reps).max(1),
            ..base
        }
    }
}

/// Entries per write op in workload (b).
const ENTRIES_PER_REQUEST: usize = 100;
/// Requests in flight per lane in the engine's default config (the fair per-op concurrency).
const ENGINE_IN_FLIGHT: usize = 2;
/// The resource the queries read.
const SEEDED: &str = "items";

// ---------------------------------------------------------------------------------------
// The server and a counting transport
// ---------------------------------------------------------------------------------------

/// One server with redb storage in a fresh folder, on its own runtime, and a client runtime.
struct Env {
    server_rt: tokio::runtime::Runtime,
    client_rt: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    url: String,
    dir: PathBuf,
}

impl Env {
    fn start() -> Env {
        let dir = std::env::temp_dir().join(format!("atoma-bench-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp folder can be created");
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("server")
            // Keep blocking threads: their CPU time is read per thread.
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()
            .expect("a server runtime");
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("client")
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()
            .expect("a client runtime");
        let config = ServerConfig::from_toml_str("heartbeat_secs = 15")
            .expect("a valid config")
            .with_bind("127.0.0.1:0".parse().expect("an address"))
            .with_data_dir(&dir);
        let server = server_rt.block_on(Server::start(config)).expect("the server starts");
        let url = format!("http://{}", server.addr);
        Env { server_rt, client_rt, server: Some(server), url, dir }
    }

    fn transport(&self) -> Counting {
        Counting::new(HttpTransport::new(&self.url, None).expect("an HTTP client"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.server_rt.block_on(s.shutdown());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real HTTP transport, counting requests.
#[derive(Clone)]
struct Counting {
    inner: Arc<HttpTransport>,
    requests: Arc<AtomicUsize>,
}

impl Counting {
    fn new(inner: HttpTransport) -> Self {
        Counting { inner: Arc::new(inner), requests: Arc::new(AtomicUsize::new(0)) }
    }
    fn take_count(&self) -> usize {
        self.requests.swap(0, Ordering::Relaxed)
    }
}

impl Transport for Counting {
    fn send(&self, req: OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<OpsResponse, StandardError>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.send(req, trace)
    }
    // The engine sends through this: forward it, or the default would re-encode every answer.
    fn send_raw(&self, req: &OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<RawOpsResponse, StandardError>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.send_raw(req, trace)
    }
}

// ---------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------

/// Makes every write id unique across runs.
static ROUND: AtomicU64 = AtomicU64::new(0);

fn next_round() -> u64 {
    ROUND.fetch_add(1, Ordering::Relaxed)
}

fn by_id(i: usize, seeded: usize) -> Query {
    Query::filter(field("id").eq(format!("s{}", i % seeded)))
}

fn create(entry_id: String, id: String, n: usize) -> WireWriteEntry {
    WireWriteEntry {
        entry_id,
        action: WriteAction::Create,
        item: WriteItem {
            entity_id: Some(id.clone()),
            base_version: None,
            value: Some(serde_json::json!({ "n": n, "hp": 10 })),
            ops: None,
            meta: ItemMeta { idempotency_key: format!("k-{id}"), client_time_ms: 1_760_000_000_000 },
        },
        options: None,
    }
}

fn one_op(op: OpBody) -> OpsRequest {
    OpsRequest { meta: Meta::v1(), ops: vec![RemoteOp { op_id: "o0".into(), body: op, meta: None }] }
}

/// The data of a one-op response's op, after checking that the request and the op succeeded.
fn op_data(resp: OpsResponse) -> serde_json::Value {
    assert!(resp.ok, "the request failed: {:?}", resp.error);
    let r = resp.data.expect("a response with data").results.into_iter().next().expect("one result");
    assert!(r.ok, "op {} failed: {:?}", r.op_id, r.error);
    r.data.expect("a result with data")
}

/// A one-op query response, typed (as the engine delivers it).
fn take_query(resp: OpsResponse) -> QueryResult {
    serde_json::from_value(op_data(resp)).expect("a query result")
}

/// A one-op write response, typed, after checking that every entry succeeded; the number of
/// entries written.
fn take_write(resp: OpsResponse) -> usize {
    let w: WriteResult = serde_json::from_value(op_data(resp)).expect("a write result");
    for e in &w.results {
        assert!(e.ok, "entry {} failed: {:?}", e.entry_id, e.error);
    }
    w.results.len()
}

/// Seeds `n` records `s0..s<n>` in requests of 1000 entries.
fn seed(env: &Env, t: &Counting, n: usize) {
    env.client_rt.block_on(async {
        for start in (0..n).step_by(1000) {
            let entries = (start..(start + 1000).min(n)).map(|i| create(format!("e{i}"), format!("s{i}"), i)).collect();
            let req = one_op(OpBody::Write { write: WriteRequest { resource: SEEDED.into(), entries } });
            let resp = t.send(req, None).await.expect("seeding succeeds");
            take_write(resp);
        }
    });
    t.take_count();
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

/// How long a workload took and how many requests it sent.
#[derive(Clone, Copy, Debug)]
struct Run {
    took: Duration,
    requests: usize,
    /// CPU used meanwhile (filled in by [`median_run`]).
    cpu: Cpu,
}

/// CPU time in ms of this process's threads, by runtime: the server's threads (workers and
/// blocking pool are all named `server`), the client's (`client`), and the rest (the bench's
/// main thread: enqueueing, awaiting).
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    server: f64,
    client: f64,
    other: f64,
}

/// Clock ticks per second of `/proc/*/stat` (`_SC_CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

impl Cpu {
    /// Now, from `/proc/self/task/*/stat` (zero where that is unavailable).
    fn now() -> Cpu {
        let mut cpu = Cpu::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return cpu };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // Fields 14 and 15 (utime, stime); the split starts at field 3.
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            let ms = (ticks(11) + ticks(12)) * 1000.0 / CLK_TCK;
            match &stat[open + 1..close] {
                "server" => cpu.server += ms,
                "client" => cpu.client += ms,
                _ => cpu.other += ms,
            }
        }
        cpu
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            client: self.client - before.client,
            other: self.other - before.other,
        }
    }

    fn total(&self) -> f64 {
        self.server + self.client + self.other
    }
}

/// `n` queries by id through one engine: enqueue all, flush, await all.
fn engine_queries(env: &Env, t: &Counting, n: usize, seeded: usize) -> Run {
    let engine = BatchEngine::new(Arc::new(t.clone()), BatchConfig::default(), env.client_rt.handle().clone());
    // Like the http executor: the resource is the emitter.
    let ctx = TaskContext { trace_id: None, emitter: Some(SEEDED.into()) };
    let started = Instant::now();
    let futs: Vec<_> = (0..n).map(|i| engine.enqueue_query(SEEDED.into(), by_id(i, seeded), ctx.clone())).collect();
    engine.flush();
    env.client_rt.block_on(async {
        for f in futs {
            let r = f.await.expect("the query succeeds");
            assert_eq!(r.data.len(), 1, "one record by id");
        }
    });
    let took = started.elapsed();
    engine.dispose();
    Run { took, requests: t.take_count(), cpu: Cpu::default() }
}

/// `n` creates of tiny records through one engine (one `enqueue_write` per record).
fn engine_writes(env: &Env, t: &Counting, n: usize) -> Run {
    let engine = BatchEngine::new(Arc::new(t.clone()), BatchConfig::default(), env.client_rt.handle().clone());
    let round = next_round();
    let resource = "writes_engine";
    let ctx = TaskContext { trace_id: None, emitter: Some(resource.into()) };
    let started = Instant::now();
    let futs: Vec<_> = (0..n)
        .map(|i| {
            // Entry ids must be unique among everything queued: the engine matches results
            // to tasks by entry id.
            let entry = create(format!("e{round}-{i}"), format!("w{round}-{i}"), i);
            engine.enqueue_write(WriteRequest { resource: resource.into(), entries: vec![entry] }, ctx.clone())
        })
        .collect();
    engine.flush();
    env.client_rt.block_on(async {
        for f in futs {
            let r = f.await.expect("the write request succeeds");
            for e in &r.results {
                assert!(e.ok, "entry {} failed: {:?}", e.entry_id, e.error);
            }
        }
    });
    let took = started.elapsed();
    WRITTEN.fetch_add(n, Ordering::Relaxed);
    engine.dispose();
    Run { took, requests: t.take_count(), cpu: Cpu::default() }
}

/// Runs `n` jobs with `in_flight` workers, each sending its jobs one after another.
fn with_workers<F, Fut>(env: &Env, n: usize, in_flight: usize, job: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    env.client_rt.block_on(async {
        let workers: Vec<_> = (0..in_flight.max(1))
            .map(|_| {
                let job = job.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        job(i).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("a worker finishes");
        }
    });
    started.elapsed()
}

/// `n` queries by id, one `POST /ops` each, `in_flight` at a time.
fn per_op_queries(env: &Env, t: &Counting, n: usize, seeded: usize, in_flight: usize) -> Run {
    let tt = t.clone();
    let took = with_workers(env, n, in_flight, move |i| {
        let req = one_op(OpBody::Query { query: QueryRequest { resource: SEEDED.into(), query: by_id(i, seeded) } });
        let send = tt.send(req, None);
        async move {
            let resp = send.await.expect("the request succeeds");
            assert_eq!(take_query(resp).data.len(), 1, "one record by id");
        }
    });
    Run { took, requests: t.take_count(), cpu: Cpu::default() }
}

/// `n` creates of tiny records, one `POST /ops` each, `in_flight` at a time.
fn per_op_writes(env: &Env, t: &Counting, n: usize, in_flight: usize) -> Run {
    let round = next_round();
    let tt = t.clone();
    let took = with_workers(env, n, in_flight, move |i| {
        let entry = create(format!("e{i}"), format!("p{round}-{i}"), i);
        let req =
            one_op(OpBody::Write { write: WriteRequest { resource: "writes_per_op".into(), entries: vec![entry] } });
        let send = tt.send(req, None);
        async move {
            let resp = send.await.expect("the request succeeds");
            assert_eq!(take_write(resp), 1, "one entry written");
        }
    });
    WRITTEN.fetch_add(n, Ordering::Relaxed);
    Run { took, requests: t.take_count(), cpu: Cpu::default() }
}

/// `entries` creates in requests of one write op with 100 entries, from `clients` concurrent
/// clients.
fn server_writes(env: &Env, t: &Counting, entries: usize, clients: usize) -> Run {
    let round = next_round();
    let requests = entries.div_ceil(ENTRIES_PER_REQUEST);
    let tt = t.clone();
    let took = with_workers(env, requests, clients, move |r| {
        let start = r * ENTRIES_PER_REQUEST;
        let batch = (start..(start + ENTRIES_PER_REQUEST).min(entries))
            .map(|i| create(format!("e{i}"), format!("b{round}-{i}"), i))
            .collect();
        let req = one_op(OpBody::Write { write: WriteRequest { resource: "writes_100".into(), entries: batch } });
        let send = tt.send(req, None);
        async move {
            let resp = send.await.expect("the request succeeds");
            assert!(take_write(resp) > 0, "entries written");
        }
    });
    WRITTEN.fetch_add(entries, Ordering::Relaxed);
    Run { took, requests: t.take_count(), cpu: Cpu::default() }
}

/// Records created so far (besides the seeded ones).
static WRITTEN: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------

/// One summary row: the median of several runs.
struct Row {
    name: String,
    ops: usize,
    took: Duration,
    requests: usize,
    cpu: Cpu,
}

impl Row {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.took.as_secs_f64().max(1e-9)
    }
    /// CPU µs per op.
    fn per_op(&self, ms: f64) -> f64 {
        ms * 1e3 / self.ops.max(1) as f64
    }
    /// The share of the machine's cores busy in this process during the run.
    fn busy(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        self.cpu.total() / (self.took.as_secs_f64() * 1e3 * cores).max(1e-9) * 100.0
    }
}

fn median_run(reps: usize, mut f: impl FnMut() -> Run) -> Run {
    let mut runs: Vec<Run> = (0..reps)
        .map(|_| {
            let before = Cpu::now();
            let run = f();
            Run { cpu: Cpu::now().since(before), ..run }
        })
        .collect();
    runs.sort_by_key(|r| r.took);
    runs[runs.len() / 2]
}

fn row(name: impl Into<String>, ops: usize, run: Run) -> Row {
    let r = Row { name: name.into(), ops, took: run.took, requests: run.requests, cpu: run.cpu };
    eprintln!(
        "  {:<46} {:>7} ops {:>9.1} ms {:>6} requests {:>10.0} ops/s   CPU µs/op: server {:.1} client {:.1} other {:.1}",
        r.name,
        r.ops,
        r.took.as_secs_f64() * 1e3,
        r.requests,
        r.ops_per_s(),
        r.per_op(r.cpu.server),
        r.per_op(r.cpu.client),
        r.per_op(r.cpu.other)
    );
    r
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Whether a summary row runs (`ATOMA_BENCH_ONLY`: `|`-separated substrings of row names).
fn selected(name: &str) -> bool {
    match std::env::var("ATOMA_BENCH_ONLY") {
        Ok(only) if !only.is_empty() => only.split('|').any(|o| !o.is_empty() && name.contains(o)),
        _ => true,
    }
}

fn summary(env: &Env, s: Sizes) -> String {
    let t = env.transport();
    // Warm-up: connections, the server's blocking threads, the redb page cache.
    let _ = engine_queries(env, &t, s.ops.min(1000), s.seeded);
    let _ = per_op_queries(env, &t, s.ops.min(200), s.seeded, 8);
    let _ = server_writes(env, &t, 1000, 2);
    eprintln!("\nsummary runs ({} per row, median):", s.reps);
    let n = s.ops;
    let e = s.server_entries;
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |name: String, ops: usize, f: &mut dyn FnMut() -> Run| {
        if selected(&name) {
            rows.push(row(name, ops, median_run(s.reps, f)));
        }
    };
    add("queries: engine".into(), n, &mut || engine_queries(env, &t, n, s.seeded));
    for k in [ENGINE_IN_FLIGHT, 8] {
        add(format!("queries: one request per op, {k} in flight"), n, &mut || per_op_queries(env, &t, n, s.seeded, k));
    }
    add("writes: engine".into(), n, &mut || engine_writes(env, &t, n));
    for k in [ENGINE_IN_FLIGHT, 8] {
        add(format!("writes: one request per op, {k} in flight"), n, &mut || per_op_writes(env, &t, n, k));
    }
    for c in [1, 2, 4] {
        add(format!("server: 100 entries/request, {c} clients"), e, &mut || server_writes(env, &t, e, c));
    }

    let find = |name: &str| rows.iter().find(|r| r.name == name).map(Row::ops_per_s);
    let mut out = String::new();
    let _ = writeln!(out, "\n== atoma batch engine and server (benches/batch.rs) ==");
    let _ = writeln!(
        out,
        "redb storage in a temp folder (durable commits), server and client on 127.0.0.1, {} CPU(s), load average {}; median of {} run(s)",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average(),
        s.reps
    );
    let _ = writeln!(
        out,
        "\n| workload | ops | requests | time (ms) | ops/s | CPU µs/op: server | client | bench thread | cores busy |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} % |",
            r.name,
            r.ops,
            r.requests,
            r.took.as_secs_f64() * 1e3,
            r.ops_per_s(),
            r.per_op(r.cpu.server),
            r.per_op(r.cpu.client),
            r.per_op(r.cpu.other),
            r.busy()
        );
    }
    let _ = writeln!(out, "\n| target | result | verdict |");
    let _ = writeln!(out, "|---|---:|---|");
    for kind in ["queries", "writes"] {
        let engine = find(&format!("{kind}: engine"));
        let per_op = find(&format!("{kind}: one request per op, {ENGINE_IN_FLIGHT} in flight"));
        let per_op8 = find(&format!("{kind}: one request per op, 8 in flight"));
        if let (Some(e), Some(p)) = (engine, per_op) {
            let ratio = e / p;
            let vs8 = per_op8.map(|p8| format!(" (vs 8 in flight: {:.1}×)", e / p8)).unwrap_or_default();
            let _ = writeln!(
                out,
                "| (a) {kind}: engine ≥ 10× one request per op ({ENGINE_IN_FLIGHT} in flight) | {ratio:.1}×{vs8} | {} |",
                verdict(ratio >= 10.0)
            );
        }
    }
    let best = rows
        .iter()
        .filter(|r| r.name.starts_with("server:"))
        .map(Row::ops_per_s)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    if let Some(best) = best {
        let _ = writeln!(
            out,
            "| (b) server ≥ 20,000 durable ops/s, 100 entries/request | {best:.0} ops/s (best of 1/2/4 clients) | {} |",
            verdict(best >= 20_000.0)
        );
    }
    let file = env.dir.join(atoma_server::storage::DATA_FILE);
    let _ = writeln!(
        out,
        "\nat the end the server holds {} written records; its redb file is {:.0} MB",
        WRITTEN.load(Ordering::Relaxed) + s.seeded,
        std::fs::metadata(&file).map_or(0.0, |m| m.len() as f64 / 1e6)
    );
    out
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    ops: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(ops as u64));
    g
}

fn timed(iters: u64, mut f: impl FnMut() -> Run) -> Duration {
    (0..iters).map(|_| f().took).sum()
}

fn criterion_benches(c: &mut Criterion, env: &Env, s: Sizes) {
    let t = env.transport();
    let n = s.crit_ops;
    {
        let mut g = group(c, "batch_queries_by_id", n);
        g.bench_function("engine", |b| b.iter_custom(|iters| timed(iters, || engine_queries(env, &t, n, s.seeded))));
        g.bench_function("per_op_2_in_flight", |b| {
            b.iter_custom(|iters| timed(iters, || per_op_queries(env, &t, n, s.seeded, ENGINE_IN_FLIGHT)))
        });
        g.finish();
    }
    {
        let mut g = group(c, "batch_small_writes", n);
        g.bench_function("engine", |b| b.iter_custom(|iters| timed(iters, || engine_writes(env, &t, n))));
        g.finish();
    }
    {
        let m = s.crit_per_op_writes;
        let mut g = group(c, "batch_small_writes_per_op", m);
        g.bench_function("per_op_2_in_flight", |b| {
            b.iter_custom(|iters| timed(iters, || per_op_writes(env, &t, m, ENGINE_IN_FLIGHT)))
        });
        g.finish();
    }
    {
        let e = s.crit_server_entries;
        let mut g = group(c, "server_writes_100_per_request", e);
        for clients in [2, 4] {
            g.bench_function(format!("{clients}_clients"), |b| {
                b.iter_custom(|iters| timed(iters, || server_writes(env, &t, e, clients)))
            });
        }
        g.finish();
    }
    t.take_count();
}

fn main() {
    let s = Sizes::from_env();
    eprintln!("atoma batch bench: {s:?}");
    let env = Env::start();
    eprintln!("server on {} (redb in {})", env.url, env.dir.display());
    let t = env.transport();
    let seeding = Instant::now();
    seed(&env, &t, s.seeded);
    eprintln!("seeded {} records in {:.1} ms", s.seeded, seeding.elapsed().as_secs_f64() * 1e3);

    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &env, s);
    c.final_summary();

    let table = summary(&env, s);
    println!("{table}");
}
