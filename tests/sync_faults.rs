//! Sync under faults, end to end with the real atoma-server on 127.0.0.1: a fault-injecting
//! proxy between the clients and the server drops connections, answers 500, delays requests
//! and truncates answers while two clients write (creates, updates, deletes, conflicting
//! updates, commutative counters); once the faults stop, both clients converge to the server's
//! copy and the server's change log shows every write applied exactly once. Also: the SSE
//! stream drops and reconnects; the server restarts in the middle of a push; offline writes
//! are pushed when the server is reachable again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use atoma::io::{SyncConfig, SyncEvent};
use atoma::prelude::*;
use atoma::runtime::SyncStatus;
use bevy_app::App;
use bevy_ecs::message::Messages;
use bevy_ecs::system::RunSystemOnce;
use common::proxy::{Fault, Proxy, change_log, server_records};
use common::server::{TestServer, temp_dir};
use common::*;
use serde_json::Value as Json;

/// The tests run one at a time: each has a server, a proxy and two clients, and two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings for quick retries: short backoffs, writes never become dead letters by failing.
fn config(url: &str, pull_interval: Duration) -> SyncConfig {
    let mut config = SyncConfig::new(url);
    config.pull_interval = pull_interval;
    config.push_batch = 16;
    config.retry.base = Duration::from_millis(10);
    config.retry.max = Duration::from_millis(100);
    config.reconnect.base = Duration::from_millis(10);
    config.reconnect.max = Duration::from_millis(100);
    config.max_attempts = 100_000;
    config
}

fn client(config: SyncConfig, dir: &std::path::Path) -> App {
    app(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"), |app| {
        app.add_store::<Player>(StoreConfig::default());
    })
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

fn status(app: &App) -> SyncStatus {
    app.world().resource::<SyncStatus>().clone()
}

fn events(app: &mut App) -> Vec<SyncEvent> {
    app.world_mut().resource_mut::<Messages<SyncEvent>>().drain().collect()
}

/// (id, name, gold, version), sorted.
type Snapshot = Vec<(u32, String, i64, u64)>;

fn snapshot(app: &App) -> Snapshot {
    let mut v: Vec<_> =
        store(app).table().iter().map(|e| (e.record.id, e.record.name.clone(), e.record.gold, e.version)).collect();
    v.sort();
    v
}

fn server_snapshot(addr: SocketAddr) -> Snapshot {
    let mut v: Vec<_> = server_records(addr, "players")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().and_then(|s| s.parse().ok()).expect("a numeric id"),
                r["name"].as_str().expect("a name").to_owned(),
                r["gold"].as_i64().unwrap_or(0),
                r["version"].as_u64().expect("a version"),
            )
        })
        .collect();
    v.sort();
    v
}

fn idle(app: &App) -> bool {
    let s = status(app);
    s.pending == 0 && s.in_flight == 0
}

/// Runs both apps until `done` holds (at most `limit`).
fn converge(a: &mut App, b: &mut App, limit: Duration, mut done: impl FnMut(&mut App, &mut App) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        a.update();
        b.update();
        if done(a, b) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    false
}

/// Runs both apps until both outboxes are empty and both stores equal the server's records.
fn converge_with_server(a: &mut App, b: &mut App, server: SocketAddr, limit: Duration) -> Snapshot {
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let mut found = None;
    let ok = converge(a, b, limit, |a, b| {
        if !idle(a) || !idle(b) || last_check.elapsed() < Duration::from_millis(100) {
            return false;
        }
        last_check = Instant::now();
        let (sa, sb) = (snapshot(a), snapshot(b));
        if sa != sb {
            return false;
        }
        let ss = server_snapshot(server);
        if ss == sa {
            found = Some(ss);
            true
        } else {
            false
        }
    });
    assert!(
        ok,
        "no convergence within {limit:?}\n a: {:?} {:?}\n b: {:?} {:?}\n server: {:?}",
        status(a),
        snapshot(a),
        status(b),
        snapshot(b),
        server_snapshot(server)
    );
    found.expect("converged")
}

/// One write of the workload.
#[derive(Clone, Debug)]
enum W {
    Create(u32, String),
    Update(u32, String),
    Delete(u32),
    Inc(u32, i64),
}

fn write(app: &mut App, ops: Vec<W>) {
    app.world_mut()
        .run_system_once(move |mut w: Writer<Player>| {
            for op in ops.clone() {
                match op {
                    W::Create(id, name) => w.create(player(id, &name, 1)),
                    W::Update(id, name) => w.update(id, move |p| p.name = name),
                    W::Delete(id) => w.delete(id),
                    W::Inc(id, by) => w.inc(id, "gold", by),
                };
            }
        })
        .expect("the write system runs");
}

/// Shared counters, only ever incremented (by both clients).
const COUNTERS: [u32; 3] = [1, 2, 3];
/// A record both clients update (full-value updates: one of two concurrent ones conflicts).
const CONTESTED: u32 = 9;

/// What the writes of both clients should leave on the server.
#[derive(Default, Debug)]
struct Expect {
    /// Each client-owned record's names, in write order (the create's first).
    names: BTreeMap<u32, Vec<String>>,
    /// Deleted client-owned records.
    deleted: BTreeSet<u32>,
    /// Each counter's increments: their sum and how many.
    incs: BTreeMap<u32, (i64, u64)>,
    /// Every name a contested update wrote.
    contested: BTreeSet<String>,
}

impl Expect {
    /// Round `r` of client `who`, which owns the ids `base..`: a create, updates of earlier
    /// records, now and then a delete, increments of two counters, now and then an update of
    /// the contested record.
    fn round(&mut self, who: &str, base: u32, r: u32) -> Vec<W> {
        let mut ops = Vec::new();
        let id = base + r;
        let name = format!("{who}{r}-c");
        ops.push(W::Create(id, name.clone()));
        self.names.insert(id, vec![name]);
        for back in [1, 3] {
            if r < back {
                continue;
            }
            let target = base + r - back;
            if self.deleted.contains(&target) {
                continue;
            }
            let name = format!("{who}{r}-u{back}");
            ops.push(W::Update(target, name.clone()));
            self.names.get_mut(&target).expect("created earlier").push(name);
        }
        if r >= 4 && r.is_multiple_of(4) {
            let target = base + r - 2;
            if self.deleted.insert(target) {
                ops.push(W::Delete(target));
            }
        }
        let (c1, c2) = (COUNTERS[(r % 3) as usize], COUNTERS[((r + 1) % 3) as usize]);
        let by = i64::from(r % 5 + 1);
        ops.push(W::Inc(c1, by));
        let e = self.incs.entry(c1).or_default();
        e.0 += by;
        e.1 += 1;
        if r.is_multiple_of(2) {
            ops.push(W::Inc(c2, 1));
            let e = self.incs.entry(c2).or_default();
            e.0 += 1;
            e.1 += 1;
        }
        if r % 6 == 3 {
            let name = format!("{who}{r}-x");
            ops.push(W::Update(CONTESTED, name.clone()));
            self.contested.insert(name);
        }
        ops
    }
}

/// Creates the counters and the contested record on `a` and waits until `b` has them and
/// `a`'s copies are confirmed.
fn seed_shared(a: &mut App, b: &mut App) {
    let mut ops: Vec<W> = COUNTERS.iter().map(|c| W::Create(*c, format!("counter{c}"))).collect();
    ops.push(W::Create(CONTESTED, "contested".into()));
    write(a, ops);
    let shared: Vec<u32> = COUNTERS.iter().copied().chain([CONTESTED]).collect();
    assert!(
        converge(a, b, Duration::from_secs(10), |a, b| {
            shared.iter().all(|id| {
                store(a).entry(id).is_some_and(|e| e.version == 1) && store(b).entry(id).is_some_and(|e| e.version == 1)
            })
        }),
        "the shared records reach b: a {:?} b {:?}",
        snapshot(a),
        snapshot(b)
    );
}

/// Checks the server's records and change log against what the clients wrote: each write
/// applied exactly once.
fn check_exactly_once(server: SocketAddr, expect: &Expect, final_state: &Snapshot) {
    let log = change_log(server, &["players"]);
    let mut by_record: BTreeMap<u32, Vec<&Json>> = BTreeMap::new();
    for c in &log {
        let id = c["entityId"].as_str().and_then(|s| s.parse().ok()).expect("a numeric id");
        by_record.entry(id).or_default().push(c);
    }
    let state: BTreeMap<u32, &(u32, String, i64, u64)> = final_state.iter().map(|r| (r.0, r)).collect();
    let name_of = |c: &Json| c["value"]["name"].as_str().map(str::to_owned);
    // Every record's log: versions 1, 2, 3, … (one change per applied write, none twice), a
    // delete only at the end.
    for (id, changes) in &by_record {
        let versions: Vec<u64> = changes.iter().map(|c| c["version"].as_u64().expect("a version")).collect();
        let want: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, want, "record {id}: the change log's versions");
        for c in &changes[..changes.len() - 1] {
            assert_eq!(c["kind"], "upsert", "record {id}: a change after a delete");
        }
    }
    // Counters: exactly the sum of the increments, one change per increment.
    for (c, (sum, count)) in &expect.incs {
        let changes = &by_record[c];
        assert_eq!(changes.len() as u64, 1 + count, "counter {c}: one change per increment");
        let row = state.get(c).expect("the counter exists");
        assert_eq!(row.2, *sum, "counter {c}: the exact sum of the increments");
        assert_eq!(row.3, 1 + count, "counter {c}: its version");
        let golds: Vec<i64> = changes.iter().map(|c| c["value"]["gold"].as_i64().unwrap_or(0)).collect();
        assert!(golds.windows(2).all(|w| w[0] < w[1]), "counter {c}: every change adds: {golds:?}");
    }
    // Client-owned records: created once, each name written at most once, in write order; the
    // last name (or the delete) is what the server holds.
    for (id, names) in &expect.names {
        let changes = by_record.get(id).unwrap_or_else(|| panic!("record {id} is in the change log"));
        let applied: Vec<String> = changes.iter().filter_map(|c| name_of(c)).collect();
        assert_eq!(
            changes.iter().filter(|c| c["version"] == 1).count(),
            1,
            "record {id}: created once (with its first name, or a later one compacted into it)"
        );
        let distinct: BTreeSet<&String> = applied.iter().collect();
        assert_eq!(distinct.len(), applied.len(), "record {id}: a write applied twice: {applied:?}");
        let mut want = names.iter();
        for n in &applied {
            assert!(want.any(|w| w == n), "record {id}: {n} out of write order ({applied:?} vs {names:?})");
        }
        if expect.deleted.contains(id) {
            assert_eq!(changes.last().map(|c| c["kind"].clone()), Some(Json::from("delete")), "record {id}");
            assert!(!state.contains_key(id), "record {id} is deleted");
        } else {
            let row = state.get(id).unwrap_or_else(|| panic!("record {id} exists"));
            assert_eq!(Some(&row.1), names.last(), "record {id}: the last write wins");
            assert_eq!(row.3, changes.len() as u64, "record {id}: its version counts its changes");
        }
    }
    // The contested record: every update applied at most once.
    let contested: Vec<String> = by_record[&CONTESTED].iter().filter_map(|c| name_of(c)).collect();
    let distinct: BTreeSet<&String> = contested.iter().collect();
    assert_eq!(distinct.len(), contested.len(), "the contested record: an update applied twice: {contested:?}");
    assert!(contested.iter().skip(1).all(|n| expect.contested.contains(n)), "{contested:?}");
    // Nothing else.
    let known: BTreeSet<u32> = expect.names.keys().copied().chain(COUNTERS).chain([CONTESTED]).collect::<BTreeSet<_>>();
    for id in by_record.keys() {
        assert!(known.contains(id), "record {id} was never written");
    }
}

/// Only conflicts of the contested record may be dead letters.
fn check_dead_letters(app: &App, who: &str) {
    for d in &status(app).dead_letters {
        assert!(
            d.item.entity_id == CONTESTED.to_string() && d.error.code == "CONFLICT",
            "{who}: an unexpected dead letter: {d:?}"
        );
    }
}

/// The burst under `fault`: both clients write through the proxy while it faults
/// `per_mille`/1000 of the requests; then the faults stop and everything converges.
fn burst_under(fault: Fault, per_mille: u32, seed: u64, tag: &str) {
    let _serial = serial();
    let started = Instant::now();
    let server = TestServer::start("", Some(&temp_dir(&format!("faults-{tag}-server"))));
    let addr = server.server.as_ref().map(|s| s.addr).expect("running");
    let proxy = Proxy::start(addr, seed);
    let mut a = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir(&format!("faults-{tag}-a")));
    let mut b = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir(&format!("faults-{tag}-b")));
    seed_shared(&mut a, &mut b);

    proxy.set(fault, per_mille);
    let before = proxy.stats();
    let mut expect = Expect::default();
    for r in 0..24 {
        if r == 12 {
            // The notification streams drop too, and come back through the faults.
            proxy.cut_streams();
        }
        let ops = expect.round("a", 100, r);
        write(&mut a, ops);
        let ops = expect.round("b", 200, r);
        write(&mut b, ops);
        for _ in 0..4 {
            a.update();
            b.update();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Let the lanes struggle for a while longer.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        a.update();
        b.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = proxy.stats();
    assert!(during.faulted > before.faulted, "the proxy faulted requests: {during:?}");
    proxy.pass();
    // Both streams are back (notifications lost while they were down are caught up by the
    // pull each reconnect starts).
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(10), |a, b| status(a).connected && status(b).connected),
        "both streams reconnect"
    );

    let state = converge_with_server(&mut a, &mut b, addr, Duration::from_secs(20));
    check_dead_letters(&a, "a");
    check_dead_letters(&b, "b");
    check_exactly_once(addr, &expect, &state);
    eprintln!("{tag}: {:?} in {:?}", proxy.stats(), started.elapsed());
}

#[test]
fn dropped_connections() {
    burst_under(Fault::Drop, 400, 1, "drop");
}

#[test]
fn server_errors() {
    burst_under(Fault::Error500, 400, 2, "500");
}

#[test]
fn delays() {
    burst_under(Fault::Delay(60), 500, 3, "delay");
}

#[test]
fn truncated_answers() {
    burst_under(Fault::Truncate, 400, 4, "truncate");
}

#[test]
fn mixed_faults() {
    burst_under(Fault::Mixed, 500, 5, "mixed");
}

/// Runs `app` until `done` sees the events it waits for (at most `limit`).
fn wait_events(
    a: &mut App,
    b: &mut App,
    limit: Duration,
    mut done: impl FnMut(&[SyncEvent], &[SyncEvent]) -> bool,
) -> bool {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    converge(a, b, limit, |a, b| {
        ea.extend(events(a));
        eb.extend(events(b));
        done(&ea, &eb)
    })
}

/// Whether `events` has a `Disconnected` and, after it, a `Connected`.
fn reconnected(events: &[SyncEvent]) -> bool {
    let Some(d) = events.iter().position(|e| matches!(e, SyncEvent::Disconnected { .. })) else { return false };
    events[d..].iter().any(|e| matches!(e, SyncEvent::Connected))
}

#[test]
fn the_notification_stream_drops_and_reconnects() {
    let _serial = serial();
    let server = TestServer::start("", Some(&temp_dir("faults-sse-server")));
    let addr = server.server.as_ref().map(|s| s.addr).expect("running");
    let proxy = Proxy::start(addr, 6);
    // Pulls come from notifications only (the periodic pull is a minute away).
    let mut a = client(config(&proxy.url, Duration::from_secs(60)), &temp_dir("faults-sse-a"));
    let mut b = client(config(&proxy.url, Duration::from_secs(60)), &temp_dir("faults-sse-b"));
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(10), |a, b| status(a).connected
            && status(b).connected
            && proxy.open_streams() == 2),
        "both streams open"
    );
    write(&mut a, vec![W::Create(1, "first".into())]);
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(10), |_, b| store(b).contains(&1)),
        "b is notified of a's record"
    );

    for round in 0..3u32 {
        events(&mut a);
        events(&mut b);
        assert_eq!(proxy.cut_streams(), 2, "round {round}: both streams were open");
        assert!(
            wait_events(&mut a, &mut b, Duration::from_secs(10), |ea, eb| reconnected(ea) && reconnected(eb)),
            "round {round}: both clients see the stream drop and come back"
        );
        assert!(
            converge(&mut a, &mut b, Duration::from_secs(10), |a, b| status(a).connected
                && status(b).connected
                && proxy.open_streams() == 2),
            "round {round}: both streams open again"
        );
        // A change made now reaches b through the new stream, promptly.
        let name = format!("after cut {round}");
        let n2 = name.clone();
        write(&mut a, vec![W::Update(1, name)]);
        assert!(
            converge(&mut a, &mut b, Duration::from_secs(5), |_, b| store(b).get(&1).is_some_and(|p| p.name == n2)),
            "round {round}: b sees a's change through the notification"
        );
    }

    // A change made while b's stream is down (b misses its notification) reaches b once the
    // stream is back, without waiting for the periodic pull.
    proxy.refuse_streams(true);
    events(&mut b);
    proxy.cut_streams();
    assert!(converge(&mut a, &mut b, Duration::from_secs(10), |_, b| !status(b).connected), "b's stream is down");
    write(&mut a, vec![W::Update(1, "while b was away".into())]);
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(10), |a, _| idle(a)
            && store(a).entry(&1).is_some_and(|e| e.version == 5)),
        "a's change is on the server"
    );
    proxy.refuse_streams(false);
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(5), |_, b| store(b)
            .get(&1)
            .is_some_and(|p| p.name == "while b was away")),
        "b catches up after reconnecting: {:?}",
        snapshot(&b)
    );
    assert_eq!(snapshot(&a), snapshot(&b));
}

#[test]
fn the_server_restarts_in_the_middle_of_a_push() {
    let _serial = serial();
    let server_dir = temp_dir("faults-restart-server");
    let mut server = TestServer::start("", Some(&server_dir));
    let addr = server.server.as_ref().map(|s| s.addr).expect("running");
    // Requests crawl through the proxy, so pushes are in flight when the server stops.
    let proxy = Proxy::start(addr, 7);
    let mut a = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir("faults-restart-a"));
    let mut b = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir("faults-restart-b"));
    seed_shared(&mut a, &mut b);
    proxy.set(Fault::Delay(25), 1000);

    let mut expect = Expect::default();
    for r in 0..30 {
        let ops = expect.round("a", 100, r);
        write(&mut a, ops);
        a.update();
    }
    // Wait until a's pushes are under way, then stop the server with writes still queued.
    assert!(
        converge(&mut a, &mut b, Duration::from_secs(10), |a, _| {
            let s = status(a);
            store(a).entry(&100).is_some_and(|e| e.version >= 1) && s.pending + s.in_flight > 0
        }),
        "a's pushes started: {:?}",
        status(&a)
    );
    server.stop();
    // The clients keep going (and keep writing) while the server is away.
    for r in 30..36 {
        let ops = expect.round("b", 200, r - 30);
        write(&mut b, ops);
        let ops = expect.round("a", 100, r);
        write(&mut a, ops);
        for _ in 0..10 {
            a.update();
            b.update();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(status(&a).pending > 0, "a still has writes to push: {:?}", status(&a));
    let back = TestServer::start_at("", &server_dir, addr);
    proxy.pass();
    let state = converge_with_server(&mut a, &mut b, addr, Duration::from_secs(20));
    check_dead_letters(&a, "a");
    check_dead_letters(&b, "b");
    check_exactly_once(addr, &expect, &state);
    drop(back);
}

#[test]
fn offline_writes_are_pushed_when_the_server_is_reachable_again() {
    let _serial = serial();
    let server = TestServer::start("", Some(&temp_dir("faults-offline-server")));
    let addr = server.server.as_ref().map(|s| s.addr).expect("running");
    let proxy = Proxy::start(addr, 8);
    let mut a = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir("faults-offline-a"));
    let mut b = client(config(&proxy.url, Duration::from_millis(300)), &temp_dir("faults-offline-b"));
    seed_shared(&mut a, &mut b);
    // Every connection is dropped: both clients are offline.
    proxy.set(Fault::Unreachable, 1000);
    proxy.cut_streams();
    let mut expect = Expect::default();
    for r in 0..12 {
        let ops = expect.round("a", 100, r);
        write(&mut a, ops);
        let ops = expect.round("b", 200, r);
        write(&mut b, ops);
        a.update();
        b.update();
    }
    for _ in 0..50 {
        a.update();
        b.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(status(&a).pending > 0 && status(&b).pending > 0, "queued while offline");
    assert!(!status(&a).connected, "a's stream is down");
    assert_eq!(server_snapshot(addr).len(), COUNTERS.len() + 1, "nothing reached the server");
    proxy.pass();
    let state = converge_with_server(&mut a, &mut b, addr, Duration::from_secs(20));
    check_dead_letters(&a, "a");
    check_dead_letters(&b, "b");
    check_exactly_once(addr, &expect, &state);
}
