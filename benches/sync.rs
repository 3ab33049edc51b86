//! Sync benchmark: the `sync` route (local-first writes + durable outbox, push / pull /
//! notify lanes) against a real atoma-server on 127.0.0.1 (redb storage, in a temp folder).
//!
//! - **(a) outbox enqueue rate.** Local commit + outbox enqueue, the real path, two ways:
//!   1. `SyncEngine` used directly as an `Executor` (lanes not started): `write_many` with
//!      N entries in one call (one redb transaction) beside N single-entry calls (N
//!      transactions, all submitted at once);
//!   2. an `App` on the `sync` route writing K creates per frame (one transaction per
//!      frame) until every `WriteSettled` arrived, beside one create per frame. Its push lane
//!      points at a port nothing listens on (the writes stay queued, as offline).
//!
//!   Then where the time goes: a bare redb commit (its fsync), each call of a run as the
//!   outbox grows, `outbox::stats` over the outbox the run left (the engine reports the
//!   counts after every write), and the push lane's first reserve over it (which indexes the
//!   items the frames appended). Next to them, the `local` route's redb side alone
//!   (`LocalExecutor::write_now`, same entries, no outbox). Target: at least 200,000 writes/s
//!   with one transaction per frame.
//! - **(b) write-on-A to visible-on-B latency** over loopback: two apps on the `sync` route
//!   (full mode) and one server. A creates one record; both apps' frames run 1 ms apart
//!   until B's store holds it. Each stage is stamped at frame granularity: A's
//!   `WriteSettled` (local commit), the server's change-log head moving (push committed),
//!   B's `SyncEvent::Notified`, B's `SyncEvent::Pulled`, visible in B's store. Three runs:
//!   isolated writes (50 ms quiet before each) and back-to-back writes with the default
//!   `notify_debounce` (20 ms), and back-to-back writes with none. Target: p50 at most 25 ms.
//! - **(c) pull-apply.** A server holding 100,000 records (loaded with 1000-entry creates
//!   over `HttpTransport`); a fresh client app (pull-only, 1000 changes per pull) pulls them
//!   all, its frames paced at 60 fps, its schedules on Bevy's single-threaded executor (so the
//!   main thread's CPU time is the frame's). Per `StoreConfig::apply_budget`: changes/s from
//!   the first frame that applied a change to the one that applied the last, and the longest
//!   `app.update()` in between (wall time, and its CPU time). Also the same pull through
//!   `HttpTransport` alone (the server + HTTP + JSON floor). Target: no frame over 8 ms.
//!
//! Criterion groups: `sync_enqueue` (engine, both ways) and `sync_latency` (one isolated
//! A→B write per iteration). Part (c) takes seconds per run and is measured only by the
//! summary. After criterion, the bench measures everything again with `Instant` and prints a
//! plain summary with the ratios and targets.
//!
//! Environment: `ATOMA_BENCH_QUICK=1` shrinks every size for a smoke run;
//! `ATOMA_BENCH_PARTS=a,c` runs only some parts; `ATOMA_BENCH_BUDGETS=500,1000` sets part
//! (c)'s apply budgets. See docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atoma::core::WriteAction;
use atoma::io::{Executor, HttpTransport, LocalExecutor, SyncConfig, SyncEngine, SyncEvent, SyncMode, Transport};
use atoma::prelude::*;
use atoma::protocol::{ItemMeta, Meta, OpBody, OpsRequest, RemoteOp, WireWriteEntry, WriteItem, WriteRequest};
use atoma::runtime::{AtomaStatus, SyncStatus};
use atoma_server::{RunningServer, Server, ServerConfig};
use bevy_app::App;
use bevy_ecs::message::Messages;
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{Schedules, SingleThreadedExecutor};
use criterion::{Criterion, SamplingMode, Throughput};

// ---------------------------------------------------------------------------------------
// Records, sizes
// ---------------------------------------------------------------------------------------

/// The benchmark record.
#[derive(atoma::Record, Clone, Debug, serde::Serialize, serde::Deserialize)]
#[record(store = "players")]
struct Player {
    id: u64,
    name: String,
    guild: String,
    level: i64,
    score: i64,
}

const STORE: &str = "players";

fn player(id: u64) -> Player {
    Player {
        id,
        name: format!("player-{id}"),
        guild: format!("guild-{}", id % 500),
        level: (id % 100) as i64,
        score: ((id * 7919) % 1_000_000) as i64,
    }
}

fn players_config(budget: usize) -> StoreConfig<Player> {
    StoreConfig::default()
        .index(IndexSpec::eq("guild"))
        .index(IndexSpec::ordered("level"))
        .index(IndexSpec::ordered("score"))
        .without_history()
        .apply_budget(budget)
}

/// Every size the bench uses (`ATOMA_BENCH_QUICK=1` shrinks them).
#[derive(Debug)]
struct Sizes {
    quick: bool,
    parts: String,
    /// Entries per `write_many` call / creates per frame in part (a).
    batch: usize,
    /// Calls / frames of `batch` in part (a).
    batch_frames: usize,
    /// Single-entry calls / one-create frames in part (a).
    single: usize,
    /// Repeats of each part (a) run in the summary (the median is kept).
    repeats: usize,
    /// Measured A→B writes per configuration in part (b).
    latency_iters: usize,
    /// Records the server holds in part (c).
    pull_records: usize,
    /// Apply budgets tried in part (c).
    budgets: Vec<usize>,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("ATOMA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let parts = std::env::var("ATOMA_BENCH_PARTS").unwrap_or_else(|_| "a,b,c".into());
        if quick {
            Self {
                quick,
                parts,
                batch: 1_000,
                batch_frames: 3,
                single: 50,
                repeats: 1,
                latency_iters: 30,
                pull_records: 10_000,
                budgets: vec![500, 2_000],
            }
        } else {
            Self {
                quick,
                parts,
                batch: 5_000,
                batch_frames: 10,
                single: 300,
                repeats: 3,
                latency_iters: 200,
                pull_records: 100_000,
                budgets: std::env::var("ATOMA_BENCH_BUDGETS")
                    .ok()
                    .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
                    .unwrap_or_else(|| vec![250, 500, 1_000, 2_000, 5_000]),
            }
        }
    }

    fn runs(&self, part: char) -> bool {
        self.parts.split(',').any(|p| p.trim().starts_with(part))
    }
}

/// A fresh temp folder.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "atoma-bench-sync-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp folder can be created");
    d
}

/// A server on its own runtime, with its redb file in a temp folder.
struct Env {
    rt: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    url: String,
    dir: PathBuf,
}

impl Env {
    fn start(name: &str) -> Env {
        let dir = temp_dir(name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("server")
            .enable_all()
            .build()
            .expect("a server runtime");
        let config = ServerConfig::from_toml_str("heartbeat_secs = 15")
            .expect("a valid config")
            .with_bind("127.0.0.1:0".parse().expect("an address"))
            .with_data_dir(&dir);
        let server = rt.block_on(Server::start(config)).expect("the server starts");
        let url = format!("http://{}", server.addr);
        Env { rt, server: Some(server), url, dir }
    }

    /// The server's change-log head (moves when a write commits).
    fn head(&self) -> u64 {
        self.server.as_ref().map_or(0, |s| s.state().head())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.rt.block_on(s.shutdown());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on (the push lane fails fast, the writes stay queued).
const NOWHERE: &str = "http://127.0.0.1:9";

fn sync_config(url: &str, mode: SyncMode) -> SyncConfig {
    let mut c = SyncConfig::new(url).mode(mode);
    c.pull_limit = 1_000;
    c
}

/// A headless app on the `sync` route, ready for `update()`.
fn sync_app(dir: &Path, config: SyncConfig, budget: usize) -> App {
    let mut app = App::new();
    app.add_plugins(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"));
    app.add_store::<Player>(players_config(budget));
    app.finish();
    app.cleanup();
    let errors = &app.world().resource::<AtomaStatus>().errors;
    assert!(errors.is_empty(), "the app starts cleanly: {errors:?}");
    app
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

/// Successful `WriteSettled`s since the last call (panics on a failed one).
fn drain_settled(app: &mut App) -> usize {
    let mut n = 0;
    for s in app.world_mut().resource_mut::<Messages<WriteSettled<Player>>>().drain() {
        assert!(s.result.is_ok(), "a write failed: {:?}", s.result);
        n += 1;
    }
    n
}

fn queue_creates(app: &mut App, records: Vec<Player>) {
    app.world_mut()
        .run_system_cached_with(
            |In(records): In<Vec<Player>>, mut w: Writer<Player>| {
                for r in records {
                    w.create(r);
                }
            },
            records,
        )
        .expect("the writer system runs");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

fn fmt_rate(r: f64) -> String {
    let s = format!("{:.0}", r);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------
// (a) outbox enqueue rate
// ---------------------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn create_entry(id: u64) -> WireWriteEntry {
    let mut value = serde_json::to_value(player(id)).expect("a record serializes");
    value["id"] = serde_json::Value::String(id.to_string());
    WireWriteEntry {
        entry_id: id.to_string(),
        action: WriteAction::Create,
        item: WriteItem {
            entity_id: Some(id.to_string()),
            base_version: None,
            value: Some(value),
            ops: None,
            meta: ItemMeta { idempotency_key: format!("bench-{id}"), client_time_ms: 1_760_000_000_000 },
        },
        options: None,
    }
}

/// A sync engine over a fresh data file (lanes not started: only local commit + enqueue).
struct EngineRig {
    engine: SyncEngine,
    rx: crossbeam_channel::Receiver<atoma::io::SyncOutput>,
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    keep: bool,
}

impl EngineRig {
    fn new() -> Self {
        let dir = temp_dir("engine");
        let local = LocalExecutor::open(dir.join("atoma.redb")).expect("the data file opens");
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = SyncEngine::new(local, sync_config(NOWHERE, SyncMode::PushOnly), tx).expect("an engine");
        engine.add_resource(STORE);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        EngineRig { engine, rx, rt, dir, keep: false }
    }

    /// `calls` calls of `per_call` creates each, all submitted at once (each call is one
    /// transaction, committed in order by the writer thread), then awaited.
    fn write(&self, per_call: usize, calls: usize) -> Duration {
        self.write_timed(per_call, calls).iter().copied().max().unwrap_or_default()
    }

    /// Like [`EngineRig::write`]; returns when each call's answer arrived (from the start).
    fn write_timed(&self, per_call: usize, calls: usize) -> Vec<Duration> {
        let reqs: Vec<WriteRequest> = (0..calls)
            .map(|_| WriteRequest {
                resource: STORE.into(),
                entries: (0..per_call).map(|_| create_entry(NEXT_ID.fetch_add(1, Ordering::Relaxed))).collect(),
            })
            .collect();
        let started = Instant::now();
        let futs: Vec<_> = reqs.into_iter().map(|r| self.engine.write_many(vec![r])).collect();
        let done = self.rt.block_on(async {
            let mut done = Vec::with_capacity(futs.len());
            for f in futs {
                for r in f.await {
                    let r = r.expect("the local commit succeeds");
                    assert!(r.results.iter().all(|e| e.ok), "every create applies");
                }
                done.push(started.elapsed());
            }
            done
        });
        while self.rx.try_recv().is_ok() {}
        done
    }

    /// Closes the engine and its data file, keeping the file; returns its folder (the
    /// caller removes it).
    fn close(mut self) -> PathBuf {
        self.keep = true;
        self.dir.clone()
    }
}

impl Drop for EngineRig {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes/s through the engine: `per_call` entries per transaction, `calls` transactions,
/// on a fresh data file.
fn engine_rate(per_call: usize, calls: usize) -> f64 {
    let rig = EngineRig::new();
    let took = rig.write(per_call, calls);
    (per_call * calls) as f64 / took.as_secs_f64()
}

/// Records/s through the `local` route's redb side, for comparison: `LocalExecutor::write_now`
/// (what its writer thread runs) with the same create entries, `per_txn` per durable
/// transaction, `txns` transactions, on a fresh data file. No outbox: the difference to
/// [`engine_rate`] is the sync route's outbox (and the local route's idempotency keys,
/// which the sync route does not keep).
fn local_rate(per_txn: usize, txns: usize) -> f64 {
    let dir = temp_dir("local");
    let exec = LocalExecutor::open(dir.join("atoma.redb")).expect("the data file opens");
    let reqs: Vec<WriteRequest> = (0..txns)
        .map(|_| WriteRequest {
            resource: STORE.into(),
            entries: (0..per_txn).map(|_| create_entry(NEXT_ID.fetch_add(1, Ordering::Relaxed))).collect(),
        })
        .collect();
    let started = Instant::now();
    for req in reqs {
        let r = exec.write_now(std::slice::from_ref(&req)).expect("the transaction commits");
        assert!(r.iter().all(|r| r.results.iter().all(|e| e.ok)), "every create applies");
    }
    let took = started.elapsed();
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
    (per_txn * txns) as f64 / took.as_secs_f64()
}

/// Writes/s through an app: `per_frame` creates in each of `frames` consecutive frames,
/// until every one settled (local commit + outbox enqueue done).
fn app_rate(per_frame: usize, frames: usize) -> (f64, Duration) {
    let dir = temp_dir("app-enqueue");
    let mut config = sync_config(NOWHERE, SyncMode::PushOnly);
    config.retry.base = Duration::from_secs(60);
    let mut app = sync_app(&dir, config, 2_000);
    app.update();
    let batches: Vec<Vec<Player>> = (0..frames)
        .map(|_| (0..per_frame).map(|_| player(NEXT_ID.fetch_add(1, Ordering::Relaxed))).collect())
        .collect();
    let total = per_frame * frames;
    let mut settled = 0;
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    for b in batches {
        queue_creates(&mut app, b);
        let f = Instant::now();
        app.update();
        longest = longest.max(f.elapsed());
        settled += drain_settled(&mut app);
    }
    while settled < total {
        assert!(started.elapsed() < Duration::from_secs(300), "{settled} of {total} settled");
        std::thread::sleep(Duration::from_micros(200));
        app.update();
        settled += drain_settled(&mut app);
    }
    let took = started.elapsed();
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
    (total as f64 / took.as_secs_f64(), longest)
}

/// Where part (a)'s time goes: a redb commit's cost (its fsync), each `write_many` call of a
/// run (the outbox grows), and `outbox::stats` (called after every write to report the
/// counts) on the outbox the run left.
struct EnqueueDiag {
    commit: Duration,
    calls: Vec<Duration>,
    outbox_items: usize,
    stats: Duration,
    /// The push lane's first reserve over that outbox: it indexes every item the frames
    /// appended (their index rows are written there, not in the frames' transactions).
    first_reserve: Duration,
    /// The next reserve (200 items, nothing left to index).
    next_reserve: Duration,
}

fn enqueue_diag(per_call: usize, calls: usize) -> EnqueueDiag {
    let dir = temp_dir("diag");
    let commit = {
        let db = redb::Database::create(dir.join("bare.redb")).expect("a redb file");
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let times: Vec<f64> = (0..20u64)
            .map(|i| {
                let started = Instant::now();
                let txn = db.begin_write().expect("a write");
                txn.open_table(t).expect("a table").insert(i, i).expect("an insert");
                txn.commit().expect("a commit");
                started.elapsed().as_secs_f64()
            })
            .collect();
        Duration::from_secs_f64(median(times))
    };
    let _ = std::fs::remove_dir_all(&dir);
    let rig = EngineRig::new();
    // Awaited one by one: each call's own time.
    let mut done = Vec::new();
    for _ in 0..calls {
        done.push(rig.write_timed(per_call, 1)[0]);
    }
    let dir = rig.close();
    let db = {
        let started = Instant::now();
        loop {
            match redb::Database::open(dir.join("atoma.redb")) {
                Ok(db) => break db,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(5), "the engine's file reopens: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    };
    let stats: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let s = atoma::io::outbox::stats(&db).expect("stats");
            assert_eq!(s.pending, per_call * calls);
            started.elapsed().as_secs_f64()
        })
        .collect();
    let reserve = || {
        let started = Instant::now();
        let got = atoma::io::outbox::reserve(&db, 200, i64::MAX / 2).expect("reserve");
        assert_eq!(got.len(), 200);
        started.elapsed()
    };
    let first_reserve = reserve();
    let next_reserve = reserve();
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    EnqueueDiag {
        commit,
        calls: done,
        outbox_items: per_call * calls,
        stats: Duration::from_secs_f64(median(stats)),
        first_reserve,
        next_reserve,
    }
}

// ---------------------------------------------------------------------------------------
// (b) A → B latency
// ---------------------------------------------------------------------------------------

/// Milliseconds from the write to each stage (frame granularity).
#[derive(Clone, Copy, Debug)]
struct Stamps {
    settled_on_a: f64,
    on_server: f64,
    notified_b: f64,
    pulled_b: f64,
    visible_on_b: f64,
}

/// Two apps on one server, both subscribed.
struct Pair {
    a: App,
    b: App,
    dirs: [PathBuf; 2],
}

impl Pair {
    fn new(env: &Env, debounce: Duration) -> Pair {
        let dirs = [temp_dir("a"), temp_dir("b")];
        let config = || {
            let mut c = sync_config(&env.url, SyncMode::Full);
            c.notify_debounce = debounce;
            c
        };
        let mut a = sync_app(&dirs[0], config(), 2_000);
        let mut b = sync_app(&dirs[1], config(), 2_000);
        let started = Instant::now();
        while !(a.world().resource::<SyncStatus>().connected && b.world().resource::<SyncStatus>().connected) {
            assert!(started.elapsed() < Duration::from_secs(10), "both apps subscribe");
            a.update();
            b.update();
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut p = Pair { a, b, dirs };
        for _ in 0..10 {
            p.once(env, Duration::ZERO);
        }
        p
    }

    /// Frames of both apps (1 ms apart) for `quiet`, then one record written on A, frames
    /// until B holds it.
    fn once(&mut self, env: &Env, quiet: Duration) -> Stamps {
        let calm = Instant::now();
        while calm.elapsed() < quiet {
            self.a.update();
            self.b.update();
            std::thread::sleep(Duration::from_millis(1));
        }
        // Ids no other part uses (pairs share the server).
        let id = 1_000_000_000 + NEXT_ID.fetch_add(1, Ordering::Relaxed);
        drain_settled(&mut self.a);
        self.b.world_mut().resource_mut::<Messages<SyncEvent>>().drain().for_each(drop);
        let head = env.head();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let mut s = Stamps {
            settled_on_a: f64::NAN,
            on_server: f64::NAN,
            notified_b: f64::NAN,
            pulled_b: f64::NAN,
            visible_on_b: f64::NAN,
        };
        let t0 = Instant::now();
        queue_creates(&mut self.a, vec![player(id)]);
        self.a.update();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(10), "record {id} never reached B");
            if s.settled_on_a.is_nan() && drain_settled(&mut self.a) > 0 {
                s.settled_on_a = ms(t0);
            }
            if s.on_server.is_nan() && env.head() > head {
                s.on_server = ms(t0);
            }
            self.b.update();
            for e in self.b.world_mut().resource_mut::<Messages<SyncEvent>>().drain() {
                match e {
                    SyncEvent::Notified { .. } if s.notified_b.is_nan() => s.notified_b = ms(t0),
                    SyncEvent::Pulled { changes, .. } if changes > 0 && s.pulled_b.is_nan() => s.pulled_b = ms(t0),
                    _ => {}
                }
            }
            if store(&self.b).contains(&id) {
                s.visible_on_b = ms(t0);
                if s.on_server.is_nan() {
                    s.on_server = s.visible_on_b;
                }
                return s;
            }
            self.a.update();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The quiet spell before an isolated write (longer than the default `notify_debounce`).
const QUIET: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// (c) pull-apply
// ---------------------------------------------------------------------------------------

/// Loads `n` records into the server, 1000 creates per request.
fn seed(env: &Env, n: usize) -> Duration {
    let t = HttpTransport::new(&env.url, None).expect("an HTTP client");
    let started = Instant::now();
    env.rt.block_on(async {
        for start in (0..n).step_by(1_000) {
            let entries = (start..(start + 1_000).min(n)).map(|i| create_entry(i as u64 + 1)).collect();
            let req = OpsRequest {
                meta: Meta::v1(),
                ops: vec![RemoteOp {
                    op_id: "seed".into(),
                    body: OpBody::Write { write: WriteRequest { resource: STORE.into(), entries } },
                    meta: None,
                }],
            };
            let resp = t.send(req, None).await.expect("seeding succeeds");
            assert!(resp.ok, "seeding: {:?}", resp.error);
            let r = &resp.data.as_ref().expect("results").results[0];
            assert!(r.ok, "seeding: {:?}", r.error);
        }
    });
    started.elapsed()
}

/// Pulls every change through `HttpTransport` alone (server + HTTP + JSON, nothing applied):
/// the floor under the pull lane's own time.
/// One `changes.pull` page of 1000 after `cursor` through `HttpTransport`: its changes and
/// the next cursor.
async fn pull_page(t: &HttpTransport, cursor: &str) -> (usize, String) {
    use atoma::protocol::{PullRequest, PullResult};
    let req = OpsRequest {
        meta: Meta::v1(),
        ops: vec![RemoteOp {
            op_id: "p".into(),
            body: OpBody::Pull {
                pull: PullRequest {
                    cursor: cursor.to_owned(),
                    limit: Some(1_000),
                    resources: Some(vec![STORE.into()]),
                },
            },
            meta: None,
        }],
    };
    let resp = t.send(req, None).await.expect("a pull");
    let r = resp.data.expect("results").results.into_iter().next().expect("a result");
    let page: PullResult = serde_json::from_value(r.data.expect("a page")).expect("a pull result");
    (page.changes.len(), page.next_cursor)
}

/// Median times of a page pulled at the start of the log and at its end, alternated.
fn page_at_start_and_end(env: &Env, n: usize) -> (Duration, Duration) {
    let t = HttpTransport::new(&env.url, None).expect("an HTTP client");
    let (mut start, mut end) = (Vec::new(), Vec::new());
    let late = (n.saturating_sub(1_000)).to_string();
    env.rt.block_on(async {
        for _ in 0..7 {
            for (cursor, out) in [("0", &mut start), (late.as_str(), &mut end)] {
                let t0 = Instant::now();
                let (got, _) = pull_page(&t, cursor).await;
                assert!(got > 0, "a page at {cursor}");
                out.push(t0.elapsed().as_secs_f64());
            }
        }
    });
    (Duration::from_secs_f64(median(start)), Duration::from_secs_f64(median(end)))
}

fn bare_pull(env: &Env, n: usize) -> (Duration, Vec<Duration>) {
    let t = HttpTransport::new(&env.url, None).expect("an HTTP client");
    let started = Instant::now();
    let pages = env.rt.block_on(async {
        let mut cursor = "0".to_owned();
        let mut got = 0;
        let mut pages = Vec::new();
        while got < n {
            let page_started = Instant::now();
            let (k, next) = pull_page(&t, &cursor).await;
            assert!(k > 0, "{got} of {n} pulled");
            got += k;
            cursor = next;
            pages.push(page_started.elapsed());
        }
        pages
    });
    (started.elapsed(), pages)
}

/// This thread's time on a CPU so far (`/proc/thread-self/schedstat`; zero where there is
/// none). A frame's wall time minus its CPU time is time the thread waited for a core.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// A 60 fps game's frame period.
const FRAME_PERIOD: Duration = Duration::from_micros(16_667);

#[derive(Debug)]
struct PullRun {
    budget: usize,
    /// Changes/s from the first applying frame's start to the last one's end.
    apply_rate: f64,
    /// The longest frame (wall) from the first applying frame to the last, and its CPU time.
    longest: Duration,
    longest_cpu: Duration,
    /// The most CPU time any frame of that window took.
    max_cpu: Duration,
    /// Frames in that window, and how many applied changes (their median wall time).
    frames: usize,
    applying_frames: usize,
    median_applying: Duration,
    /// From the app's first frame until every record was in the store.
    total: Duration,
    /// From the app's first frame until the pull lane's last `Pulled` event was seen.
    pulled_at: Duration,
    /// The three frames with the most CPU time: (frame in the window, records in the store
    /// before it, CPU time).
    heaviest: Vec<(usize, usize, Duration)>,
}

/// A fresh client pulls `n` records, its frames paced at 60 fps.
fn pull_run(env: &Env, n: usize, budget: usize) -> PullRun {
    let dir = temp_dir("pull");
    let mut app = sync_app(&dir, sync_config(&env.url, SyncMode::PullOnly), budget);
    // Every system on this thread, so that its CPU time is the frame's (with one store the
    // reduce is one system under either executor).
    for (_, schedule) in app.world_mut().resource_mut::<Schedules>().iter_mut() {
        schedule.set_executor(SingleThreadedExecutor::new());
    }
    let started = Instant::now();
    // (wall, cpu, applied changes, records before it) per frame, from the first frame that
    // applied a change.
    let mut window: Vec<(Duration, Duration, bool, usize)> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut pulled = 0usize;
    let mut pulled_at = Duration::ZERO;
    let mut len = 0;
    let mut tick = Instant::now();
    while len < n {
        assert!(started.elapsed() < Duration::from_secs(600), "{len} of {n} applied");
        let (f0, c0) = (Instant::now(), thread_cpu());
        app.update();
        let (took, cpu) = (f0.elapsed(), thread_cpu().saturating_sub(c0));
        let now = store(&app).len();
        for e in app.world_mut().resource_mut::<Messages<SyncEvent>>().drain() {
            if let SyncEvent::Pulled { changes, .. } = e {
                pulled += changes;
                pulled_at = started.elapsed();
            }
        }
        if now > len {
            first.get_or_insert(f0);
            last = Some(f0 + took);
        }
        if first.is_some() {
            window.push((took, cpu, now > len, len));
        }
        len = now;
        tick += FRAME_PERIOD;
        match tick.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => tick = Instant::now(),
        }
    }
    let total = started.elapsed();
    assert!(pulled >= n, "the pull lane reported {pulled} changes");
    let (first, last) = (first.expect("applied"), last.expect("applied"));
    let (longest, longest_cpu, _, _) = window.iter().copied().max_by_key(|f| f.0).unwrap_or_default();
    let max_cpu = window.iter().map(|f| f.1).max().unwrap_or_default();
    // The three frames that used the most CPU: where in the pull they came.
    let mut by_cpu: Vec<_> = window.iter().enumerate().map(|(i, f)| (f.1, i, f.3)).collect();
    by_cpu.sort_by_key(|f| std::cmp::Reverse(f.0));
    let heaviest = by_cpu.iter().take(3).map(|&(cpu, frame, records)| (frame, records, cpu)).collect();
    let mut applying: Vec<Duration> = window.iter().filter(|f| f.2).map(|f| f.0).collect();
    applying.sort();
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
    PullRun {
        budget,
        apply_rate: n as f64 / (last - first).as_secs_f64(),
        longest,
        longest_cpu,
        max_cpu,
        frames: window.len(),
        applying_frames: applying.len(),
        median_applying: applying[applying.len() / 2],
        total,
        pulled_at,
        heaviest,
    }
}

// ---------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------

fn bench_a(c: &mut Criterion, s: &Sizes) {
    let mut g = c.benchmark_group("sync_enqueue");
    g.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(s.batch as u64));
    g.bench_function(format!("engine_one_txn_{}_writes", s.batch), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| EngineRig::new().write(s.batch, 1)).sum())
    });
    g.throughput(Throughput::Elements(s.single as u64));
    g.bench_function(format!("engine_one_txn_per_write_{}_writes", s.single), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| EngineRig::new().write(1, s.single)).sum())
    });
    g.throughput(Throughput::Elements(s.batch as u64));
    g.bench_function(format!("local_write_now_one_txn_{}_writes", s.batch), |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| Duration::from_secs_f64(s.batch as f64 / local_rate(s.batch, 1))).sum()
        })
    });
    g.finish();
}

fn bench_b(c: &mut Criterion, env: &Env) {
    let mut pair = Pair::new(env, SyncConfig::new("").notify_debounce);
    let mut g = c.benchmark_group("sync_latency");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("a_to_b_isolated_write", |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| Duration::from_secs_f64(pair.once(env, QUIET).visible_on_b / 1e3)).sum()
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------

fn summary_a(w: &mut String, s: &Sizes) {
    let runs = |f: &dyn Fn() -> f64| median((0..s.repeats).map(|_| f()).collect());
    let engine_batched = runs(&|| engine_rate(s.batch, s.batch_frames));
    let engine_single = runs(&|| engine_rate(1, s.single));
    let mut app_longest = Duration::ZERO;
    let mut app_batched = Vec::new();
    for _ in 0..s.repeats {
        let (r, l) = app_rate(s.batch, s.batch_frames);
        app_batched.push(r);
        app_longest = app_longest.max(l);
    }
    let app_batched = median(app_batched);
    let app_single = runs(&|| app_rate(1, s.single).0);
    let local_batched = runs(&|| local_rate(s.batch, s.batch_frames * 2));
    let local_small = runs(&|| local_rate(s.batch / 5, s.batch_frames * 2));
    let _ =
        writeln!(w, "\n(a) outbox enqueue rate (local commit + outbox item, one redb file; median of {})", s.repeats);
    let _ = writeln!(
        w,
        "  engine write_many, {} entries per call (1 transaction), {} calls: {:>10} writes/s",
        s.batch,
        s.batch_frames,
        fmt_rate(engine_batched)
    );
    let _ = writeln!(
        w,
        "  engine write_many, 1 entry per call (1 transaction each), {} calls: {:>8} writes/s   ratio {:.0}x",
        s.single,
        fmt_rate(engine_single),
        engine_batched / engine_single
    );
    let _ = writeln!(
        w,
        "  app, {} creates per frame, {} frames:                          {:>10} writes/s   (longest frame {:.2} ms)",
        s.batch,
        s.batch_frames,
        fmt_rate(app_batched),
        app_longest.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        w,
        "  app, 1 create per frame, {} frames:                               {:>8} writes/s   ratio {:.0}x",
        s.single,
        fmt_rate(app_single),
        app_batched / app_single
    );
    let _ = writeln!(
        w,
        "  TARGET >= 200,000 writes/s with one transaction per frame (the engine: local commit + outbox): {} (engine {}; the app adds the frame's reduce: {})",
        verdict(engine_batched >= 200_000.0),
        fmt_rate(engine_batched),
        fmt_rate(app_batched)
    );
    let _ = writeln!(
        w,
        "  local route, redb side alone (LocalExecutor::write_now, no outbox), {} / {} creates per transaction, {} transactions: {} / {} records/s   (the floor under the outbox; no target of its own)",
        s.batch,
        s.batch / 5,
        s.batch_frames * 2,
        fmt_rate(local_batched),
        fmt_rate(local_small),
    );
    let d = enqueue_diag(s.batch, s.batch_frames);
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let _ = writeln!(
        w,
        "  where the time goes: a bare redb commit (fsync) {:.2} ms; write_many of {} entries, one call at a time, as the outbox grows: {}; outbox::stats() over {} items (run after every write to report the counts) {:.3} ms",
        ms(&d.commit),
        s.batch,
        d.calls.iter().map(|c| format!("{:.1}", ms(c))).collect::<Vec<_>>().join(" / ") + " ms",
        d.outbox_items,
        ms(&d.stats)
    );
    let _ = writeln!(
        w,
        "  deferred to the push lane: its first reserve indexes the {} queued items: {:.1} ms ({:.2} µs per item); the next reserve of 200: {:.2} ms",
        d.outbox_items,
        ms(&d.first_reserve),
        d.first_reserve.as_secs_f64() * 1e6 / d.outbox_items as f64,
        ms(&d.next_reserve)
    );
}

fn summary_b(w: &mut String, s: &Sizes, env: &Env) {
    let _ = writeln!(
        w,
        "\n(b) write on A -> visible on B, loopback, both apps' frames 1 ms apart ({} writes each)",
        s.latency_iters
    );
    let default = SyncConfig::new("").notify_debounce;
    let runs = [
        (
            format!(
                "isolated writes ({} ms quiet before each), notify_debounce {} ms",
                QUIET.as_millis(),
                default.as_millis()
            ),
            default,
            QUIET,
            true,
        ),
        (format!("back-to-back writes, notify_debounce {} ms", default.as_millis()), default, Duration::ZERO, true),
        ("back-to-back writes, notify_debounce 0 ms".to_owned(), Duration::ZERO, Duration::ZERO, false),
    ];
    for (name, debounce, quiet, judged) in runs {
        let mut pair = Pair::new(env, debounce);
        let stamps: Vec<Stamps> = (0..s.latency_iters).map(|_| pair.once(env, quiet)).collect();
        drop(pair);
        let col = |f: fn(&Stamps) -> f64| {
            let mut v: Vec<f64> = stamps.iter().map(f).filter(|x| !x.is_nan()).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let visible = col(|x| x.visible_on_b);
        let (p50, p95) = (percentile(&visible, 0.5), percentile(&visible, 0.95));
        let _ = writeln!(
            w,
            "  {name}: visible on B p50 {:5.1} ms  p95 {:5.1} ms  max {:5.1} ms{}",
            p50,
            p95,
            visible.last().copied().unwrap_or(f64::NAN),
            if judged { format!("   TARGET p50 <= 25 ms: {}", verdict(p50 <= 25.0)) } else { String::new() }
        );
        let stage = |name: &str, f: fn(&Stamps) -> f64| {
            let v = col(f);
            format!("{name} {:4.1} / {:4.1}", percentile(&v, 0.5), percentile(&v, 0.95))
        };
        let _ = writeln!(
            w,
            "      stages, ms after the write (p50 / p95): {}; {}; {}; {}",
            stage("settled on A", |x| x.settled_on_a),
            stage("on the server", |x| x.on_server),
            stage("B notified", |x| x.notified_b),
            stage("B pulled", |x| x.pulled_b),
        );
    }
}

fn summary_c(w: &mut String, s: &Sizes) {
    let env = Env::start("pull-server");
    let seeded = seed(&env, s.pull_records);
    let _ = writeln!(
        w,
        "\n(c) pull-apply: {} records on the server (seeded in {:.1} s, {} records/s), fresh pull-only client, 1000 changes per pull, frames paced at 60 fps",
        s.pull_records,
        seeded.as_secs_f64(),
        fmt_rate(s.pull_records as f64 / seeded.as_secs_f64())
    );
    let (bare, pages) = bare_pull(&env, s.pull_records);
    let _ = writeln!(
        w,
        "  the same pull through HttpTransport alone (server + HTTP + JSON, nothing stored or applied): {:.2} s, {} changes/s; a 1000-change page takes {:.1} ms (median)",
        bare.as_secs_f64(),
        fmt_rate(s.pull_records as f64 / bare.as_secs_f64()),
        median(pages.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    );
    let (at_start, at_end) = page_at_start_and_end(&env, s.pull_records);
    let _ = writeln!(
        w,
        "  one page alone, alternated (median of 7): after cursor 0 {:.1} ms, after cursor {} {:.1} ms",
        at_start.as_secs_f64() * 1e3,
        s.pull_records.saturating_sub(1_000),
        at_end.as_secs_f64() * 1e3
    );
    let (mut met, mut met_cpu) = (Vec::new(), Vec::new());
    for &budget in &s.budgets {
        let r = pull_run(&env, s.pull_records, budget);
        let _ = writeln!(
            w,
            "  apply_budget {:>5}: {:>9} changes/s applied; longest frame {:6.2} ms (its CPU time {:5.2} ms; most CPU in a frame {:5.2} ms) over {} frames, {} applying (median {:5.2} ms); all visible after {:.2} s (pull lane done at {:.2} s)",
            r.budget,
            fmt_rate(r.apply_rate),
            r.longest.as_secs_f64() * 1e3,
            r.longest_cpu.as_secs_f64() * 1e3,
            r.max_cpu.as_secs_f64() * 1e3,
            r.frames,
            r.applying_frames,
            r.median_applying.as_secs_f64() * 1e3,
            r.total.as_secs_f64(),
            r.pulled_at.as_secs_f64()
        );
        let heaviest: Vec<String> = r
            .heaviest
            .iter()
            .map(|(frame, records, cpu)| {
                format!("frame {frame} ({records} records before it) {:.2} ms", cpu.as_secs_f64() * 1e3)
            })
            .collect();
        let _ = writeln!(w, "      most CPU: {}", heaviest.join("; "));
        if r.longest <= Duration::from_millis(8) {
            met.push(budget);
        }
        if r.max_cpu <= Duration::from_millis(8) {
            met_cpu.push(budget);
        }
    }
    let _ = writeln!(
        w,
        "  TARGET longest frame <= 8 ms while applying: {} by wall time (budgets meeting it: {:?}); by the frames' CPU time: budgets {:?}",
        verdict(!met.is_empty()),
        met,
        met_cpu
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let s = Sizes::from_env();
    println!("atoma sync bench{}: {s:?}", if s.quick { " (ATOMA_BENCH_QUICK)" } else { "" });
    let load_start = load_average();
    let env = Env::start("server");
    let mut c = Criterion::default().configure_from_args();
    if s.runs('a') {
        bench_a(&mut c, &s);
    }
    if s.runs('b') {
        bench_b(&mut c, &env);
    }
    c.final_summary();

    let mut out = String::new();
    if s.runs('a') {
        summary_a(&mut out, &s);
    }
    if s.runs('b') {
        summary_b(&mut out, &s, &env);
    }
    if s.runs('c') {
        summary_c(&mut out, &s);
    }
    println!("\n======== atoma sync bench: summary ========");
    println!(
        "machine: {} CPUs; load average at start {load_start}, at end {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!("{out}");
}
