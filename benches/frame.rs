//! Frame benchmark: what atoma costs a Bevy frame, in three parts, each run side by side
//! with its comparison in the same process.
//!
//! - **(a) batched writes.** A 100,000-record store (memory route) with three indexes (`eq`
//!   on `guild`, `ordered` on `level` and `score`). Timed: the `app.update()` of the frame in
//!   which 10,000 update intents are reduced into one commit — beside the same 10,000
//!   updates committed one intent per frame (the sum of those 10,000 frames). Targets: under
//!   3 ms per batched frame, at least 5× ahead of one intent per frame.
//! - **(b) idle stores.** `app.update()` of an app with 20 registered, idle stores, beside the
//!   same app with no store and a bare Bevy app. Target: under 5 µs per frame.
//! - **(c) durable throughput.** The `local` route (a redb file in a fresh temp dir): creates
//!   written N per frame, one redb transaction per frame, until every `WriteSettled` arrived
//!   (acks come after the durable commit) — beside one record per frame, and beside the redb
//!   side alone (`LocalExecutor::write_now` called directly). Frames run at most at 1 kHz.
//!   Target: at least 100,000 records/s with one transaction per frame.
//!
//! Every measured frame is measured the same way in both variants of a comparison: intents
//! are queued (untimed) for a system in `Update` to write through `Writer<Player>`; one
//! `app.update()` is timed; then, untimed, frames run until the executor's acks came back and
//! were reduced, so no answer from an earlier iteration lands in a later measured frame.
//!
//! Criterion groups: `a_write_frame`, `b_idle_frame`, `c_local_durable`. After criterion, the
//! bench times everything again with `Instant` (medians) and prints a plain summary with the
//! ratios and targets, a phase breakdown of the batched frame, and part (a)'s floor: the same
//! updates and index merges as a bare loop with no bookkeeping, on one and two threads
//! (`frame/floor.rs`).
//!
//! Environment: `ATOMA_BENCH_QUICK=1` shrinks every size for a smoke run;
//! `ATOMA_BENCH_PARTS=a,c` runs only some parts (criterion and summary alike; for profiling);
//! `ATOMA_BENCH_SINGLE=100` times only 100 one-intent frames in part (a);
//! `ATOMA_BENCH_BATCHED=30` times 30 batched frames in part (a) instead of 9 (for A/B runs);
//! `ATOMA_PERF_CTL=<fifo>` drives `perf record --control fifo:<fifo> -D -1` so that only the
//! batched frames of part (a) are sampled.
//! See docs/benchmarks.md.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atoma::prelude::*;
use atoma::runtime::{AtomaStatus, StoreMetrics};
use bevy_app::{App, Last, PostUpdate, Update};
use bevy_ecs::message::Messages;
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{Schedules, SingleThreadedExecutor};
use criterion::{Criterion, SamplingMode, Throughput};

#[path = "frame/floor.rs"]
mod floor;

// ---------------------------------------------------------------------------------------
// Records, sizes, data
// ---------------------------------------------------------------------------------------

/// The benchmark record (parts a and c).
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

fn players_config() -> StoreConfig<Player> {
    StoreConfig::default()
        .index(IndexSpec::eq("guild"))
        .index(IndexSpec::ordered("level"))
        .index(IndexSpec::ordered("score"))
}

/// Declares record types for idle stores, and a function registering all of them.
macro_rules! idle_stores {
    ($($name:ident),* $(,)?) => {
        $(
            /// An idle store's record (part b).
            #[derive(atoma::Record, Clone, Debug, serde::Serialize, serde::Deserialize)]
            struct $name {
                id: u64,
                value: i64,
            }
        )*

        /// How many idle store types there are.
        const IDLE_STORES: usize = [$(stringify!($name)),*].len();

        /// Registers every idle store.
        fn add_idle_stores(app: &mut App) {
            $( app.add_store::<$name>(StoreConfig::default()); )*
        }
    };
}

idle_stores!(
    Idle01, Idle02, Idle03, Idle04, Idle05, Idle06, Idle07, Idle08, Idle09, Idle10, Idle11, Idle12, Idle13, Idle14,
    Idle15, Idle16, Idle17, Idle18, Idle19, Idle20,
);

/// Every size the bench uses (`ATOMA_BENCH_QUICK=1` shrinks them).
struct Sizes {
    quick: bool,
    /// Which parts run (`ATOMA_BENCH_PARTS`, default all).
    parts: String,
    /// Records preloaded in part (a).
    records: u64,
    /// Intents in the batched frame of part (a).
    batch: usize,
    /// Creates per preload frame.
    preload_chunk: usize,
    /// Batched frames timed for the summary median.
    batched_runs: usize,
    /// Single-intent frames timed (the summed comparison scales to `batch` when fewer).
    single_frames: usize,
    /// Idle frames timed per app (after as many warm-up frames / 10).
    idle_frames: usize,
    /// Records per frame in part (c), each with `local_frames` frames.
    local_per_frame: [usize; 2],
    local_frames: usize,
    /// Records written one per frame in part (c).
    local_single: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("ATOMA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let parts = std::env::var("ATOMA_BENCH_PARTS").unwrap_or_else(|_| "a,b,c".into());
        if quick {
            Self {
                quick,
                parts,
                records: 10_000,
                batch: 1_000,
                preload_chunk: 1_000,
                batched_runs: 3,
                single_frames: 1_000,
                idle_frames: 2_000,
                local_per_frame: [1_000, 500],
                local_frames: 5,
                local_single: 50,
            }
        } else {
            Self {
                quick,
                parts,
                records: 100_000,
                batch: 10_000,
                preload_chunk: 2_000,
                batched_runs: 9,
                single_frames: 10_000,
                idle_frames: 20_000,
                local_per_frame: [5_000, 1_000],
                local_frames: 20,
                local_single: 300,
            }
        }
    }

    /// `ATOMA_BENCH_SINGLE=N` times N one-intent frames in part (a) instead (for profiling
    /// the batched frame: the one-intent frames dominate a profile otherwise);
    /// `ATOMA_BENCH_BATCHED=N` times N batched frames.
    fn with_env_overrides(mut self) -> Self {
        if let Some(n) = std::env::var("ATOMA_BENCH_SINGLE").ok().and_then(|v| v.parse::<usize>().ok()) {
            self.single_frames = n.max(1);
        }
        if let Some(n) = std::env::var("ATOMA_BENCH_BATCHED").ok().and_then(|v| v.parse::<usize>().ok()) {
            self.batched_runs = n.max(1);
        }
        self
    }

    fn runs(&self, part: char) -> bool {
        self.parts.split(',').any(|p| p.trim().starts_with(part))
    }
}

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn new_player(id: u64, rng: &mut Rng) -> Player {
    Player {
        id,
        name: format!("player-{id}"),
        guild: format!("guild-{}", rng.below(500)),
        level: rng.below(100) as i64,
        score: rng.below(1_000_000) as i64,
    }
}

/// One intent for the script system.
enum Intent {
    Create(Player),
    Update { id: u64, level: i64, score: i64 },
}

/// `n` updates of distinct random records among `1..=records`, with new `level` and `score`
/// (both ordered indexes change; the `guild` index does not).
fn random_updates(rng: &mut Rng, records: u64, n: usize) -> Vec<Intent> {
    let mut ids: Vec<u64> = (1..=records).collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n.min(ids.len()) {
        let j = i + rng.below((ids.len() - i) as u64) as usize;
        ids.swap(i, j);
        out.push(Intent::Update { id: ids[i], level: rng.below(100) as i64, score: rng.below(1_000_000) as i64 });
    }
    out
}

// ---------------------------------------------------------------------------------------
// The app and its driving
// ---------------------------------------------------------------------------------------

/// Intents to write, one entry per frame.
#[derive(Resource, Default)]
struct Script {
    frames: VecDeque<Vec<Intent>>,
}

/// Writes this frame's intents through `Writer<Player>` (a game system would do the same).
fn run_script(mut script: ResMut<Script>, mut w: Writer<Player>) {
    let Some(intents) = script.frames.pop_front() else { return };
    for intent in intents {
        match intent {
            Intent::Create(p) => {
                w.create(p);
            }
            Intent::Update { id, level, score } => {
                w.update(id, move |p: &mut Player| {
                    p.level = level;
                    p.score = score;
                });
            }
        }
    }
}

/// A headless app with the plugin, the players store and the script system.
fn players_app(plugin: AtomaPlugin, extra: impl FnOnce(&mut App)) -> App {
    let mut app = App::new();
    app.add_plugins(plugin);
    app.add_store::<Player>(players_config());
    app.init_resource::<Script>();
    app.add_systems(Update, run_script);
    extra(&mut app);
    app.finish();
    app.cleanup();
    let errors = &app.world().resource::<AtomaStatus>().errors;
    assert!(errors.is_empty(), "atoma did not start cleanly: {errors:?}");
    app
}

fn queue(app: &mut App, intents: Vec<Intent>) {
    app.world_mut().resource_mut::<Script>().frames.push_back(intents);
}

fn metrics(app: &App) -> StoreMetrics {
    app.world().resource::<AtomaMetrics>().store(STORE)
}

/// Settled results seen so far.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.ok + self.failed
    }
    fn assert_ok(&self, expected: usize, what: &str) {
        assert_eq!(self.failed, 0, "{what}: {} write(s) failed; first: {:?}", self.failed, self.first_error);
        assert_eq!(self.ok, expected, "{what}: settled writes");
    }
}

fn drain_settled(app: &mut App, tally: &mut Tally) {
    for s in app.world_mut().resource_mut::<Messages<WriteSettled<Player>>>().drain() {
        match s.result {
            Ok(_) => tally.ok += 1,
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn timed_update(app: &mut App) -> Duration {
    let t = Instant::now();
    app.update();
    t.elapsed()
}

/// Untimed: runs frames until the executor answered every write in flight and the answers
/// were reduced, then two idle frames (so this round's messages are cleared). Returns the
/// time of the frame that reduced the acks.
fn settle(app: &mut App, tally: &mut Tally) -> Duration {
    let start = Instant::now();
    let mut ack_frame = Duration::ZERO;
    drain_settled(app, tally);
    while metrics(app).in_flight > 0 {
        assert!(start.elapsed() < Duration::from_secs(120), "acks did not arrive within 120 s");
        std::thread::sleep(Duration::from_micros(20));
        ack_frame = timed_update(app);
        drain_settled(app, tally);
    }
    for _ in 0..2 {
        app.update();
        drain_settled(app, tally);
    }
    ack_frame
}

// ---------------------------------------------------------------------------------------
// (a) batched writes vs one intent per frame
// ---------------------------------------------------------------------------------------

/// The part (a) app: `records` players preloaded through the `Writer` (memory route), settled.
fn preloaded_app(sizes: &Sizes, extra: impl FnOnce(&mut App)) -> (App, Duration) {
    let mut app = players_app(AtomaPlugin::in_memory(), extra);
    let mut rng = Rng(7);
    let t = Instant::now();
    let mut tally = Tally::default();
    let mut next = 1u64;
    while next <= sizes.records {
        let end = (next + sizes.preload_chunk as u64).min(sizes.records + 1);
        queue(&mut app, (next..end).map(|id| Intent::Create(new_player(id, &mut rng))).collect());
        app.update();
        settle(&mut app, &mut tally);
        next = end;
    }
    tally.assert_ok(sizes.records as usize, "preload");
    assert_eq!(app.world().resource::<Store<Player>>().len(), sizes.records as usize);
    (app, t.elapsed())
}

/// One batched frame: `batch` updates reduced into one commit. Returns (frame, ack frame).
fn batched_frame(app: &mut App, rng: &mut Rng, sizes: &Sizes) -> (Duration, Duration) {
    queue(app, random_updates(rng, sizes.records, sizes.batch));
    let commits = metrics(app).commits;
    perf_ctl("enable");
    let frame = timed_update(app);
    perf_ctl("disable");
    assert_eq!(metrics(app).commits, commits + 1, "the batched frame is one commit");
    let mut tally = Tally::default();
    let ack = settle(app, &mut tally);
    tally.assert_ok(sizes.batch, "batched frame");
    (frame, ack)
}

/// With `ATOMA_PERF_CTL=<fifo>`, tells `perf record --control fifo:<fifo> -D -1` to sample
/// only the batched frames (`enable` / `disable`).
fn perf_ctl(cmd: &str) {
    use std::io::Write as _;
    if let Some(path) = std::env::var_os("ATOMA_PERF_CTL")
        && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path)
    {
        let _ = writeln!(f, "{cmd}");
    }
}

/// One frame with one update intent. Returns (frame, ack frame).
fn single_frame(app: &mut App, rng: &mut Rng, sizes: &Sizes) -> (Duration, Duration) {
    queue(app, random_updates_one(rng, sizes.records));
    let frame = timed_update(app);
    let mut tally = Tally::default();
    let ack = settle(app, &mut tally);
    tally.assert_ok(1, "single-intent frame");
    (frame, ack)
}

fn random_updates_one(rng: &mut Rng, records: u64) -> Vec<Intent> {
    vec![Intent::Update {
        id: 1 + rng.below(records),
        level: rng.below(100) as i64,
        score: rng.below(1_000_000) as i64,
    }]
}

/// Instants taken by marker systems around atoma's sets (the phase breakdown of part a).
#[derive(Resource, Default)]
struct Marks([Option<Instant>; 6]);

fn mark<const I: usize>(mut m: ResMut<Marks>) {
    m.0[I] = Some(Instant::now());
}

fn add_marks(app: &mut App) {
    app.init_resource::<Marks>()
        .add_systems(Update, (mark::<0>.before(run_script), mark::<1>.after(run_script)))
        .add_systems(PostUpdate, (mark::<2>.before(AtomaSystems::Reduce), mark::<3>.after(AtomaSystems::Reduce)))
        .add_systems(Last, (mark::<4>.before(AtomaSystems::Flush), mark::<5>.after(AtomaSystems::Flush)));
}

/// Where the batched frame's time goes: (writer pushes, reduce, flush, total).
fn phases(app: &mut App, rng: &mut Rng, sizes: &Sizes, n: usize) -> [Duration; 4] {
    queue(app, random_updates(rng, sizes.records, n));
    let total = timed_update(app);
    let m = app.world().resource::<Marks>().0;
    let span = |a: usize, b: usize| match (m[a], m[b]) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    let out = [span(0, 1), span(2, 3), span(4, 5), total];
    let mut tally = Tally::default();
    settle(app, &mut tally);
    tally.assert_ok(n, "instrumented batched frame");
    out
}

struct PartA {
    preload: Duration,
    batched: Vec<Duration>,
    batched_ack: Vec<Duration>,
    single_sum: Duration,
    single_frames: Vec<Duration>,
    single_ack: Vec<Duration>,
    single_scale: f64,
    /// Per batch size: the median phases of 3 batched frames.
    phases: Vec<(usize, [Duration; 4])>,
}

fn part_a(sizes: &Sizes) -> PartA {
    let (mut app, preload) = preloaded_app(sizes, |_| {});
    let mut rng = Rng(42);
    // Warm-up (untimed): a batched frame and a few single ones.
    batched_frame(&mut app, &mut rng, sizes);
    for _ in 0..20 {
        single_frame(&mut app, &mut rng, sizes);
    }
    let mut batched = Vec::new();
    let mut batched_ack = Vec::new();
    let mut single_frames = Vec::new();
    let mut single_ack = Vec::new();
    // Interleave the two variants so drift (allocator, caches, the executor's growing
    // idempotency map) hits both alike.
    let per_round = sizes.single_frames.div_ceil(sizes.batched_runs);
    for _ in 0..sizes.batched_runs {
        let (f, a) = batched_frame(&mut app, &mut rng, sizes);
        batched.push(f);
        batched_ack.push(a);
        for _ in 0..per_round {
            if single_frames.len() == sizes.single_frames {
                break;
            }
            let (f, a) = single_frame(&mut app, &mut rng, sizes);
            single_frames.push(f);
            single_ack.push(a);
        }
    }
    let single_scale = sizes.batch as f64 / single_frames.len() as f64;
    let single_sum = single_frames.iter().sum::<Duration>().mul_f64(single_scale);
    drop(app);

    let (mut app, _) = preloaded_app(sizes, add_marks);
    batched_frame(&mut app, &mut rng, sizes);
    let phases = [sizes.batch / 10, sizes.batch / 4, sizes.batch / 2, sizes.batch]
        .into_iter()
        .map(|n| {
            let runs: Vec<[Duration; 4]> = (0..3).map(|_| phases(&mut app, &mut rng, sizes, n)).collect();
            (n, std::array::from_fn(|i| median(&runs.iter().map(|r| r[i]).collect::<Vec<_>>())))
        })
        .collect();
    PartA { preload, batched, batched_ack, single_sum, single_frames, single_ack, single_scale, phases }
}

fn bench_a(c: &mut Criterion, sizes: &Sizes) {
    let (mut app, _) = preloaded_app(sizes, |_| {});
    let mut rng = Rng(1);
    let mut g = c.benchmark_group("a_write_frame");
    g.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(sizes.batch as u64));
    g.bench_function(format!("batched_{}_intents_one_frame", sizes.batch), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| batched_frame(&mut app, &mut rng, sizes).0).sum())
    });
    g.measurement_time(Duration::from_millis(300));
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_intent_per_frame", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| single_frame(&mut app, &mut rng, sizes).0).sum())
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// (b) idle stores
// ---------------------------------------------------------------------------------------

/// An app for the idle-frame part: with or without atoma and the idle stores, with Bevy's
/// default (multi-threaded) executor or a single-threaded one on every schedule.
#[derive(Clone, Copy)]
struct IdleKind {
    atoma: bool,
    stores: bool,
    single_threaded: bool,
}

impl IdleKind {
    const ALL: [IdleKind; 6] = [
        IdleKind { atoma: false, stores: false, single_threaded: false },
        IdleKind { atoma: true, stores: false, single_threaded: false },
        IdleKind { atoma: true, stores: true, single_threaded: false },
        IdleKind { atoma: false, stores: false, single_threaded: true },
        IdleKind { atoma: true, stores: false, single_threaded: true },
        IdleKind { atoma: true, stores: true, single_threaded: true },
    ];

    fn label(self) -> String {
        let what = match (self.atoma, self.stores) {
            (false, _) => "bare Bevy App (no atoma)".to_owned(),
            (true, false) => "AtomaPlugin, 0 stores".to_owned(),
            (true, true) => format!("AtomaPlugin, {IDLE_STORES} idle stores"),
        };
        format!("{what}, {}", if self.single_threaded { "single-threaded" } else { "multi-threaded" })
    }

    fn bench_name(self) -> String {
        let what = match (self.atoma, self.stores) {
            (false, _) => "bevy_only".to_owned(),
            (true, false) => "atoma_0_stores".to_owned(),
            (true, true) => format!("atoma_{IDLE_STORES}_stores"),
        };
        if self.single_threaded { format!("{what}_single_threaded") } else { what }
    }

    fn app(self) -> App {
        let mut app = App::new();
        if self.atoma {
            app.add_plugins(AtomaPlugin::in_memory());
        }
        if self.stores {
            add_idle_stores(&mut app);
        }
        app.finish();
        app.cleanup();
        if self.single_threaded {
            for (_, schedule) in app.world_mut().resource_mut::<Schedules>().iter_mut() {
                schedule.set_executor(SingleThreadedExecutor::new());
            }
        }
        app
    }
}

/// Per-frame times of `frames` idle frames, after `frames / 10` warm-up frames, sorted.
fn idle_frames(kind: IdleKind, frames: usize) -> Vec<Duration> {
    let mut app = kind.app();
    for _ in 0..frames / 10 {
        app.update();
    }
    let mut out: Vec<Duration> = (0..frames).map(|_| timed_update(&mut app)).collect();
    out.sort();
    if kind.stores {
        assert_eq!(app.world().resource::<AtomaMetrics>().store("idle01").commits, 0, "idle stores stay idle");
    }
    out
}

fn bench_b(c: &mut Criterion) {
    let mut g = c.benchmark_group("b_idle_frame");
    g.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for kind in IdleKind::ALL.into_iter().filter(|k| !k.single_threaded || k.stores) {
        let mut app = kind.app();
        g.bench_function(kind.bench_name(), |b| b.iter(|| app.update()));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// (c) durable throughput on the `local` route
// ---------------------------------------------------------------------------------------

/// A fresh temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("atoma-bench-frame-{}-{tag}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("an old bench dir can be removed");
        }
        std::fs::create_dir_all(&dir).expect("the temp dir can be created");
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn creates(next_id: &mut u64, n: usize, rng: &mut Rng) -> Vec<Intent> {
    (0..n)
        .map(|_| {
            *next_id += 1;
            Intent::Create(new_player(*next_id, rng))
        })
        .collect()
}

/// Frames in part (c) run at most at 1 kHz: a frame shorter than 1 ms is followed by a sleep
/// for the rest of the millisecond, so idle frames waiting for acks do not keep a core busy
/// that the redb thread needs (this machine has two). Frames longer than 1 ms run back to back.
const MIN_FRAME: Duration = Duration::from_millis(1);

fn pace(frame: Duration) {
    if let Some(rest) = MIN_FRAME.checked_sub(frame) {
        std::thread::sleep(rest);
    }
}

/// The redb side alone, for reference: `LocalExecutor::write_now` (what the io thread runs),
/// called directly with `txns` requests of `per_txn` creates each, in the wire form the store
/// sends, one durable transaction per request. Returns the wall time.
fn local_executor_only(per_txn: usize, txns: usize) -> Duration {
    use atoma::core::WriteAction;
    use atoma::protocol::{ItemMeta, WireWriteEntry, WriteItem, WriteRequest};
    let dir = TempDir::new(&format!("exec-{per_txn}x{txns}"));
    let exec = atoma::io::LocalExecutor::open(dir.path().join("atoma.redb")).expect("the data file opens");
    let mut rng = Rng(9);
    let mut id = 0u64;
    let reqs: Vec<WriteRequest> = (0..txns)
        .map(|_| WriteRequest {
            resource: STORE.into(),
            entries: (0..per_txn)
                .map(|_| {
                    id += 1;
                    let mut value = serde_json::to_value(new_player(id, &mut rng)).expect("a player serializes");
                    value["id"] = serde_json::Value::String(id.to_string());
                    WireWriteEntry {
                        entry_id: id.to_string(),
                        action: WriteAction::Create,
                        item: WriteItem {
                            entity_id: Some(id.to_string()),
                            base_version: None,
                            value: Some(value),
                            ops: None,
                            meta: ItemMeta { idempotency_key: format!("bench-{id}"), client_time_ms: 0 },
                        },
                        options: None,
                    }
                })
                .collect(),
        })
        .collect();
    let start = Instant::now();
    for req in reqs {
        let results = exec.write_now(std::slice::from_ref(&req)).expect("the transaction commits");
        assert!(results.iter().all(|r| r.results.iter().all(|i| i.ok)), "every create applies");
    }
    start.elapsed()
}

/// One pipelined run: `frames` frames in a row (paced by [`pace`]), each writing `per_frame` creates (one
/// redb transaction each); frames keep running until every write settled.
struct LocalRun {
    per_frame: usize,
    frames: usize,
    wall: Duration,
    updates: usize,
    /// Main-thread time of the frames that wrote (sum) and of the longest frame.
    write_frames: Duration,
    longest_frame: Duration,
}

impl LocalRun {
    fn records(&self) -> usize {
        self.per_frame * self.frames
    }
    fn per_sec(&self) -> f64 {
        self.records() as f64 / self.wall.as_secs_f64()
    }
}

fn local_pipelined(per_frame: usize, frames: usize) -> LocalRun {
    let dir = TempDir::new(&format!("pipe-{per_frame}x{frames}"));
    let mut app = players_app(AtomaPlugin::default().data_dir(dir.path()), |_| {});
    let mut rng = Rng(3);
    let mut next_id = 0;
    for _ in 0..frames {
        let batch = creates(&mut next_id, per_frame, &mut rng);
        queue(&mut app, batch);
    }
    let total = per_frame * frames;
    let mut tally = Tally::default();
    let mut updates = 0;
    let mut write_frames = Duration::ZERO;
    let mut longest_frame = Duration::ZERO;
    let start = Instant::now();
    while tally.total() < total {
        assert!(start.elapsed() < Duration::from_secs(600), "local writes did not settle within 600 s");
        let d = timed_update(&mut app);
        if updates < frames {
            write_frames += d;
        }
        longest_frame = longest_frame.max(d);
        updates += 1;
        drain_settled(&mut app, &mut tally);
        pace(d);
    }
    let wall = start.elapsed();
    tally.assert_ok(total, "local pipelined run");
    assert_eq!(app.world().resource::<Store<Player>>().len(), total);
    drop(app);
    // Durable: a new app on the same file loads every record.
    let app = players_app(AtomaPlugin::default().data_dir(dir.path()), |_| {});
    assert_eq!(app.world().resource::<Store<Player>>().len(), total, "every record is on disk");
    LocalRun { per_frame, frames, wall, updates, write_frames, longest_frame }
}

/// One frame writing `n` creates, then frames until all `n` settled: the durable round trip.
fn local_round_trip(app: &mut App, next_id: &mut u64, n: usize, rng: &mut Rng) -> Duration {
    let batch = creates(next_id, n, rng);
    queue(app, batch);
    let mut tally = Tally::default();
    let start = Instant::now();
    while tally.total() < n {
        assert!(start.elapsed() < Duration::from_secs(60), "local writes did not settle within 60 s");
        let d = timed_update(app);
        drain_settled(app, &mut tally);
        pace(d);
    }
    let d = start.elapsed();
    tally.assert_ok(n, "local round trip");
    d
}

fn bench_c(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("c_local_durable");
    g.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for n in [sizes.local_per_frame[0], 1] {
        let dir = TempDir::new(&format!("criterion-{n}"));
        let mut app = players_app(AtomaPlugin::default().data_dir(dir.path()), |_| {});
        let mut rng = Rng(5);
        let mut next_id = 0;
        g.measurement_time(Duration::from_secs(if n == 1 { 2 } else { 4 }));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("round_trip_{n}_per_frame"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| local_round_trip(&mut app, &mut next_id, n, &mut rng)).sum())
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------

fn fmt_dur(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn fmt_rate(per_sec: f64) -> String {
    let mut s = format!("{:.0}", per_sec);
    let mut i = s.len() as isize - 3;
    while i > 0 {
        s.insert(i as usize, ',');
        i -= 3;
    }
    s
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

fn summary_a(w: &mut String, sizes: &Sizes) {
    let a = part_a(sizes);
    let batched = median(&a.batched);
    let single = median(&a.single_frames);
    let ratio = a.single_sum.as_secs_f64() / batched.as_secs_f64();
    let _ = writeln!(
        w,
        "\n=== (a) {} update intents into a {}-record store, 3 indexes (memory route) ===",
        sizes.batch, sizes.records
    );
    let _ = writeln!(
        w,
        "preload: {} records, {} per frame, settled: {}",
        sizes.records,
        sizes.preload_chunk,
        fmt_dur(a.preload)
    );
    let _ = writeln!(
        w,
        "batched frame (one commit):   median {} (min {}, max {}; {} runs); its ack frame: median {}",
        fmt_dur(batched),
        fmt_dur(a.batched.iter().copied().min().unwrap_or_default()),
        fmt_dur(a.batched.iter().copied().max().unwrap_or_default()),
        a.batched.len(),
        fmt_dur(median(&a.batched_ack))
    );
    let _ = writeln!(
        w,
        "one intent per frame:         median {} (mean {}; {} frames timed); its ack frame: median {}",
        fmt_dur(single),
        fmt_dur(a.single_frames.iter().sum::<Duration>() / a.single_frames.len().max(1) as u32),
        a.single_frames.len(),
        fmt_dur(median(&a.single_ack))
    );
    let scaled = if a.single_scale == 1.0 { String::new() } else { format!(" (scaled x{:.1})", a.single_scale) };
    let _ = writeln!(w, "sum of {} one-intent frames: {}{scaled}", sizes.batch, fmt_dur(a.single_sum));
    let _ = writeln!(
        w,
        "TARGET batched frame < 3 ms: {} ({}); TARGET batched >= 5x ahead: {} ({:.1}x)",
        verdict(batched < Duration::from_millis(3)),
        fmt_dur(batched),
        verdict(ratio >= 5.0),
        ratio
    );
    let _ = writeln!(
        w,
        "phases of batched frames by size (marker systems around atoma's sets; median of 3 each; per intent in brackets):"
    );
    for (n, p) in &a.phases {
        let rest = p[3].saturating_sub(p[0] + p[1] + p[2]);
        let each = |d: Duration| fmt_dur(d / (*n).max(1) as u32);
        let _ = writeln!(
            w,
            "  {n:>6} intents: frame {:>9} [{:>9}] = Writer pushes {:>9} [{:>9}] + Reduce {:>9} [{:>9}] + Flush (memory executor runs here) {:>9} [{:>9}] + rest {:>9}",
            fmt_dur(p[3]),
            each(p[3]),
            fmt_dur(p[0]),
            each(p[0]),
            fmt_dur(p[1]),
            each(p[1]),
            fmt_dur(p[2]),
            each(p[2]),
            fmt_dur(rest)
        );
    }
    let (one, two) = floor::measure(sizes.records, sizes.batch, 15);
    let _ = writeln!(
        w,
        "floor (the same updates and index merges as a bare loop, no bookkeeping; benches/frame/floor.rs; median of 15): one thread {}, two threads {}",
        fmt_dur(one),
        fmt_dur(two)
    );
    let target = Duration::from_millis(3);
    let room = if two >= target {
        format!("the bare loop alone takes {} longer than the 3 ms target", fmt_dur(two - target))
    } else {
        format!("the 3 ms target leaves {} for everything else", fmt_dur(target - two))
    };
    let _ = writeln!(
        w,
        "  batched frame / two-thread floor: {:.1}x; {room}",
        batched.as_secs_f64() / two.as_secs_f64().max(1e-9)
    );
}

fn summary_b(w: &mut String, sizes: &Sizes) {
    let _ = writeln!(
        w,
        "\n=== (b) idle frames ({} timed frames each, after {} warm-up) ===",
        sizes.idle_frames,
        sizes.idle_frames / 10
    );
    let mut medians = Vec::new();
    for kind in IdleKind::ALL {
        let v = idle_frames(kind, sizes.idle_frames);
        let m = median(&v);
        medians.push(m);
        let _ = writeln!(
            w,
            "{:<52} median {:>9}  p10 {:>9}  p90 {:>9}",
            kind.label(),
            fmt_dur(m),
            fmt_dur(percentile(&v, 0.1)),
            fmt_dur(percentile(&v, 0.9))
        );
    }
    for (name, base) in [("multi-threaded", 0), ("single-threaded", 3)] {
        let plugin = medians[base + 1].as_secs_f64() - medians[base].as_secs_f64();
        let per_store = (medians[base + 2].as_secs_f64() - medians[base + 1].as_secs_f64()) / IDLE_STORES as f64;
        let _ = writeln!(
            w,
            "atoma's own cost ({name}): plugin {:+.0} ns over bare Bevy; {:.0} ns per idle store",
            plugin * 1e9,
            per_store * 1e9
        );
    }
    let _ = writeln!(
        w,
        "TARGET frame with {IDLE_STORES} idle stores < 5 µs: {} ({} with Bevy's default executor; {} single-threaded)",
        verdict(medians[2] < Duration::from_micros(5)),
        fmt_dur(medians[2]),
        fmt_dur(medians[5])
    );
    black_box(&medians);
}

fn summary_c(w: &mut String, sizes: &Sizes) {
    let _ = writeln!(
        w,
        "\n=== (c) local route (redb in {}), durable: acks after the commit ===",
        std::env::temp_dir().display()
    );
    let mut best = 0.0f64;
    for per_frame in sizes.local_per_frame {
        let r = local_pipelined(per_frame, sizes.local_frames);
        best = best.max(r.per_sec());
        let _ = writeln!(
            w,
            "{:>5} per frame x {:>3} frames = {:>6} records: {:>9} wall, {:>8} records/s ({} frames run; the {} writing frames took {} on the main thread, longest frame {})",
            r.per_frame,
            r.frames,
            r.records(),
            fmt_dur(r.wall),
            fmt_rate(r.per_sec()),
            r.updates,
            r.frames,
            fmt_dur(r.write_frames),
            fmt_dur(r.longest_frame)
        );
    }
    let per_txn = sizes.local_per_frame[0];
    let exec = local_executor_only(per_txn, sizes.local_frames);
    let exec_records = per_txn * sizes.local_frames;
    let _ = writeln!(
        w,
        "redb side alone (LocalExecutor::write_now, {} transactions of {per_txn} creates, no app): {} for {exec_records} records = {} records/s",
        sizes.local_frames,
        fmt_dur(exec),
        fmt_rate(exec_records as f64 / exec.as_secs_f64())
    );
    let single = local_pipelined(1, sizes.local_single);
    let _ = writeln!(
        w,
        "{:>5} per frame x {:>3} frames = {:>6} records: {:>9} wall, {:>8} records/s (one transaction per record; {} frames run)",
        1,
        single.frames,
        single.records(),
        fmt_dur(single.wall),
        fmt_rate(single.per_sec()),
        single.updates
    );
    let _ = writeln!(
        w,
        "TARGET >= 100,000 records/s with one transaction per frame: {} (best {} records/s; {:.0}x one record per frame)",
        verdict(best >= 100_000.0),
        fmt_rate(best),
        best / single.per_sec()
    );
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn main() {
    let sizes = Sizes::from_env().with_env_overrides();
    println!(
        "atoma frame bench{}: parts {}; (a) {} records, {} intents per batched frame; (b) {} idle stores; (c) local route, {:?} records per frame",
        if sizes.quick { " (ATOMA_BENCH_QUICK)" } else { "" },
        sizes.parts,
        sizes.records,
        sizes.batch,
        IDLE_STORES,
        sizes.local_per_frame
    );

    let load_start = load_average();
    let mut c = Criterion::default().configure_from_args();
    if sizes.runs('a') {
        bench_a(&mut c, &sizes);
    }
    if sizes.runs('b') {
        bench_b(&mut c);
    }
    if sizes.runs('c') {
        bench_c(&mut c, &sizes);
    }
    c.final_summary();

    // Instant-based figures, printed plainly at the end.
    let mut out = String::new();
    if sizes.runs('a') {
        summary_a(&mut out, &sizes);
    }
    if sizes.runs('b') {
        summary_b(&mut out, &sizes);
    }
    if sizes.runs('c') {
        summary_c(&mut out, &sizes);
    }
    println!("\n======== atoma frame bench: summary ========");
    println!("machine: {} CPUs; load average at start {load_start}, at end {}", cpus(), load_average());
    println!("{out}");
}
