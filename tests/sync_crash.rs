//! Crash safety of the `sync` route: a client process writing bursts (creates with increasing
//! ids, an increment of a shared counter and an update of an older record every frame) is
//! killed with SIGKILL at 20 pseudo-random points, against a real atoma-server (redb storage).
//! Each run continues on the same client data dir, so the outbox items a kill left in flight
//! are recovered at start and pushed again.
//!
//! At the end a last client run pushes what is left (a barrier), and then:
//! - every write reported committed (`WriteSettled` succeeded: the write and its outbox item
//!   are in the local redb transaction) is in the client's file and on the server;
//! - the server has no duplicates: the counter equals exactly the number of increments the
//!   client committed (its local file, which the push-only writers never overwrite with the
//!   server's copy), with one version per increment; each created record has version 1
//!   unless it was updated, and one change-log entry per version;
//! - the client's file and the server agree on every record, value and version;
//! - a full-mode run (push, pull, subscribe) afterwards changes nothing.
//!
//! The child is this test binary itself, re-run with `ATOMA_SYNC_CRASH_CHILD=<dir>` and
//! `--exact sync_crash_child`. `ATOMA_SYNC_CRASH_SEED` changes the kill points.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use atoma::io::{LocalExecutor, SyncConfig, SyncMode};
use atoma::prelude::*;
use atoma::runtime::{AtomaStatus, SyncControl, SyncStatus, Ticket};
use atoma_server::Storage;
use atoma_server::storage::{DATA_FILE, RedbStorage};
use bevy_ecs::prelude::*;
use common::server::{TestServer, temp_dir};
use common::{Player, player};
use serde_json::{Map, Value as Json};

const CHILD_ENV: &str = "ATOMA_SYNC_CRASH_CHILD";
const URL_ENV: &str = "ATOMA_SYNC_CRASH_URL";
/// `write` (bursts until killed), `drain` (push-only barrier, then exit) or `full` (a
/// full-mode barrier, then exit).
const MODE_ENV: &str = "ATOMA_SYNC_CRASH_MODE";
/// The record every frame increments (creates use ids from 1 up).
const COUNTER: u32 = 0;
/// Creates per frame.
const BATCH: u32 = 20;
/// Each frame also updates the record created this many ids before the frame's first one.
const UPDATE_LAG: u32 = 3 * BATCH;
/// The child stops adding writes while this many are unanswered.
const MAX_PENDING: usize = 200;
const ROUNDS: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Create,
    Inc,
    Update,
}

fn client_app(dir: &Path, url: &str, mode: SyncMode) -> bevy_app::App {
    let mut config = SyncConfig::new(url).mode(mode);
    config.pull_interval = Duration::from_millis(200);
    config.retry.base = Duration::from_millis(20);
    config.retry.max = Duration::from_millis(200);
    config.reconnect.base = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    common::app(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"), |app| {
        app.add_store::<Player>(StoreConfig::default().without_history());
    })
}

/// Not a test on its own: the child process of the test below.
#[test]
fn sync_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let url = std::env::var(URL_ENV).expect("the parent passes the server's url");
    let mode = std::env::var(MODE_ENV).unwrap_or_else(|_| "write".into());
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        // The leading newline ends the `test sync_crash_child ... ` libtest prints first.
        writeln!(out, "\n{line}").expect("stdout");
        out.flush().expect("stdout");
    };
    let sync_mode = if mode == "full" { SyncMode::Full } else { SyncMode::PushOnly };
    let mut app = client_app(Path::new(&dir), &url, sync_mode);
    let errors = app.world().resource::<AtomaStatus>().errors.clone();
    if !errors.is_empty() {
        say(format!("ERROR start-up: {errors:?}"));
        return;
    }
    if mode != "write" {
        // Let the lanes start, then wait for everything queued to be acked (and, in full
        // mode, pulled back).
        app.update();
        let id = app.world_mut().run_system_cached(|mut c: SyncControl| c.barrier()).expect("runs");
        let start = Instant::now();
        while !app.world().resource::<SyncStatus>().reached(id) && start.elapsed() < Duration::from_secs(30) {
            app.update();
            std::thread::sleep(Duration::from_millis(2));
        }
        // One more frame so the last outbox counts arrive.
        std::thread::sleep(Duration::from_millis(20));
        app.update();
        let s = app.world().resource::<SyncStatus>().clone();
        say(format!(
            "DRAINED {} {} {} {} {}",
            s.reached(id),
            s.pending,
            s.in_flight,
            s.dead_letters.len(),
            app.world().resource::<Store<Player>>().len()
        ));
        if let Some(e) = s.last_error {
            say(format!("LAST_ERROR {e}"));
        }
        return;
    }

    let store = app.world().resource::<Store<Player>>();
    let mut next = store.iter().map(|p| p.id).max().unwrap_or(COUNTER) + 1;
    say(format!("READY {next} {}", store.len()));
    let mut kinds: HashMap<Ticket, Kind> = HashMap::new();
    if !store.contains(&COUNTER) {
        let t = app
            .world_mut()
            .run_system_cached(|mut w: Writer<Player>| w.create(player(COUNTER, "counter", 0)))
            .expect("runs");
        kinds.insert(t, Kind::Counter);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if kinds.len() < MAX_PENDING {
            let target = next.checked_sub(UPDATE_LAG).filter(|t| *t > COUNTER);
            let target = target.filter(|t| app.world().resource::<Store<Player>>().contains(t));
            let tickets = app
                .world_mut()
                .run_system_cached_with(
                    |In((first, target)): In<(u32, Option<u32>)>, mut w: Writer<Player>| {
                        let mut t: Vec<(Ticket, Kind)> = (first..first + BATCH)
                            .map(|id| (w.create(player(id, &format!("p{id}"), i64::from(id % 10))), Kind::Create))
                            .collect();
                        t.push((w.inc(COUNTER, "gold", 1), Kind::Inc));
                        if let Some(id) = target {
                            t.push((w.update(id, |p| p.name = format!("u{}", p.id)), Kind::Update));
                        }
                        t
                    },
                    (next, target),
                )
                .expect("runs");
            kinds.extend(tickets);
            next += BATCH;
        }
        app.update();
        for s in common::settled::<Player>(&mut app) {
            let kind = kinds.remove(&s.ticket);
            match (&s.result, kind, s.id) {
                (Ok(_), Some(Kind::Counter), _) => say("COUNTER".into()),
                (Ok(_), Some(Kind::Inc), _) => say("INC".into()),
                (Ok(_), Some(Kind::Create), Some(id)) => say(format!("COMMITTED {id}")),
                (Ok(_), Some(Kind::Update), Some(id)) => say(format!("UPDATED {id}")),
                (r, k, id) => say(format!("FAIL {k:?} {id:?} {r:?}")),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// xorshift64*: the kill points, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn spawn_child(dir: &Path, url: &str, mode: &str) -> (Child, Receiver<String>, std::thread::JoinHandle<String>) {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "sync_crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(URL_ENV, url)
        .env(MODE_ENV, mode)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns the child");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    (child, rx, err)
}

/// What the runs reported.
#[derive(Default)]
struct Seen {
    ready: Option<(u32, usize)>,
    committed: BTreeSet<u32>,
    updated: BTreeSet<u32>,
    incs: u64,
    drained: Option<String>,
    failures: Vec<String>,
}

impl Seen {
    fn take(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("COMMITTED"), Some(id), _) => {
                self.committed.insert(id.parse().expect("an id"));
            }
            (Some("UPDATED"), Some(id), _) => {
                self.updated.insert(id.parse().expect("an id"));
            }
            (Some("INC"), ..) => self.incs += 1,
            (Some("READY"), Some(next), Some(len)) => {
                self.ready = Some((next.parse().expect("an id"), len.parse().expect("a count")));
            }
            (Some("DRAINED"), ..) => self.drained = Some(line.to_owned()),
            (Some("FAIL" | "ERROR" | "LAST_ERROR"), ..) => self.failures.push(line.to_owned()),
            _ => {}
        }
    }
}

/// Runs a child that exits by itself (a drain) and returns what it said.
fn run_to_end(dir: &Path, url: &str, mode: &str) -> Seen {
    let (mut child, lines, stderr) = spawn_child(dir, url, mode);
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.take(&line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the {mode} child did not finish; stderr:\n{}", stderr.join().unwrap_or_default());
            }
        }
    }
    let status = child.wait().expect("reaped");
    let err = stderr.join().unwrap_or_default();
    assert!(status.success(), "the {mode} child failed: {status:?}\nstderr:\n{err}");
    seen
}

/// A record as compared: its fields without `version`, and its version.
type Snapshot = BTreeMap<String, (Map<String, Json>, u64)>;

fn local_snapshot(dir: &Path) -> Snapshot {
    let exec = LocalExecutor::open(dir.join("atoma.redb")).expect("the client file opens");
    let records = exec.load_now("players").expect("the client file reads");
    records
        .into_iter()
        .map(|(mut m, v)| {
            m.remove("version");
            let id = m.get("id").and_then(Json::as_str).expect("a string id").to_owned();
            (id, (m, v))
        })
        .collect()
}

/// Items left in the client's outbox and dead letters (read straight from its redb file).
fn outbox_left(dir: &Path) -> (u64, u64) {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    let db = redb::Database::open(dir.join("atoma.redb")).expect("the client file opens");
    let txn = db.begin_read().expect("a read");
    let count = |name: &str| match txn.open_table(TableDefinition::<u64, &[u8]>::new(name)) {
        Ok(t) => t.len().expect("len"),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => panic!("{name}: {e}"),
    };
    (count("sync/outbox"), count("sync/dead-letters"))
}

/// Outbox items a kill left behind, and how many of them were in flight (pushed, unanswered).
fn outbox_after_kill(dir: &Path) -> (usize, usize) {
    let db = redb::Database::open(dir.join("atoma.redb")).expect("the client file opens after the kill");
    // Every item, read and decoded one by one (not the outbox's own counts).
    let items = atoma::io::outbox::items(&db).expect("the outbox reads");
    let in_flight = items.iter().filter(|i| matches!(i.state, atoma::io::outbox::ItemState::InFlight { .. })).count();
    (items.len(), in_flight)
}

fn gold(m: &Map<String, Json>) -> u64 {
    m.get("gold").and_then(Json::as_u64).expect("a gold amount")
}

#[test]
fn committed_writes_survive_sigkill_and_reach_the_server_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let server_dir = temp_dir("sync-crash-server");
    let dir = temp_dir("sync-crash-client");
    let mut server = TestServer::start("", Some(&server_dir));
    let url = server.url.clone();
    let seed = std::env::var("ATOMA_SYNC_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5C_C4A5_u64);
    let mut rng = Rng(seed);
    let mut all = Seen::default();
    let mut rounds_with_commits = 0;
    let mut rounds_killed_in_flight = 0;

    for round in 0..ROUNDS {
        // Every fifth run is killed counting from its spawn: maybe while it opens the file or
        // recovers the outbox, before any write. The others from their first committed write.
        let early = round % 5 == 4;
        let delay = Duration::from_millis(rng.between(10, 300));
        let ctx = format!("seed {seed:#x}, round {round}, kill after {delay:?}{}", if early { " (early)" } else { "" });
        let (mut child, lines, stderr) = spawn_child(&dir, &url, "write");
        let mut r = Seen::default();
        if !early {
            // Count the delay from the first committed write (start-up takes a while on a
            // loaded machine): the kill lands in the burst.
            while r.ready.is_none() || (r.committed.is_empty() && r.incs == 0) {
                match lines.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => r.take(&line),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("{ctx}: the child never wrote; stderr:\n{}", stderr.join().unwrap_or_default());
                    }
                }
            }
        }
        let kill_at = Instant::now() + delay;
        loop {
            match lines.recv_timeout(kill_at.saturating_duration_since(Instant::now())) {
                Ok(line) => r.take(&line),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    panic!("{ctx}: the child exited on its own; stderr:\n{}", stderr.join().unwrap_or_default());
                }
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaped");
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "{ctx}: killed by SIGKILL");
        }
        for line in lines.iter() {
            r.take(&line);
        }
        let child_err = stderr.join().unwrap_or_default();
        assert!(r.failures.is_empty(), "{ctx}: {:?}\nstderr:\n{child_err}", r.failures);
        if let Some((next, _)) = r.ready {
            let max = all.committed.iter().next_back().copied().unwrap_or(COUNTER);
            assert!(next > max, "{ctx}: ids continue after every committed one ({next} <= {max})");
        }
        if !r.committed.is_empty() {
            rounds_with_commits += 1;
        }
        let (queued, in_flight) = if dir.join("atoma.redb").exists() { outbox_after_kill(&dir) } else { (0, 0) };
        if in_flight > 0 {
            rounds_killed_in_flight += 1;
        }
        eprintln!(
            "round {round} ({ctx}): {} creates, {} updates, {} increments committed; left {queued} outbox items, {in_flight} in flight",
            r.committed.len(),
            r.updated.len(),
            r.incs
        );
        all.committed.extend(&r.committed);
        all.updated.extend(&r.updated);
        all.incs += r.incs;
    }
    assert!(rounds_with_commits >= ROUNDS / 2, "too few runs got as far as writing: {rounds_with_commits}");
    assert!(all.incs > 0, "no increment was committed");
    assert!(rounds_killed_in_flight > 0, "no kill landed while a push was in flight");

    // Push what is left (push-only: the client's file keeps its own counter).
    let drain = run_to_end(&dir, &url, "drain");
    assert!(drain.failures.is_empty(), "drain: {:?}", drain.failures);
    let line = drain.drained.expect("the drain reports");
    assert!(line.starts_with("DRAINED true 0 0 0 "), "the outbox drained: {line}");
    assert_eq!(outbox_left(&dir), (0, 0), "no outbox item and no dead letter is left");
    let local = local_snapshot(&dir);

    // A full-mode run (pull and subscribe too) changes nothing.
    let full = run_to_end(&dir, &url, "full");
    assert!(full.failures.is_empty(), "full: {:?}", full.failures);
    assert!(full.drained.is_some_and(|l| l.starts_with("DRAINED true 0 0 0 ")), "the full run reached its barrier");
    let after_pull = local_snapshot(&dir);

    server.stop();
    let storage = RedbStorage::open(server_dir.join(DATA_FILE)).expect("the server file opens");
    let loaded = storage.load().expect("the server file reads");
    let remote: Snapshot = loaded
        .records
        .into_iter()
        .filter(|r| r.resource == "players")
        .map(|r| {
            let mut m = r.stored.value;
            m.remove("version");
            (r.id, (m, r.stored.version))
        })
        .collect();
    let log = storage.changes_after(0, usize::MAX, &mut |_| true).expect("the change log reads");
    let mut changes: HashMap<String, u64> = HashMap::new();
    for e in log.entries.iter().filter(|e| e.resource == "players") {
        *changes.entry(e.entity_id.clone()).or_default() += 1;
    }

    // Every committed write is in the client's file and on the server.
    for id in &all.committed {
        let key = id.to_string();
        assert!(local.contains_key(&key), "record {id} was committed but is not in the client's file");
        assert!(remote.contains_key(&key), "record {id} was committed but is not on the server");
    }
    for id in &all.updated {
        let key = id.to_string();
        let name = |s: &Snapshot| s.get(&key).and_then(|(m, _)| m.get("name").cloned());
        assert_eq!(name(&local), Some(Json::from(format!("u{id}"))), "record {id}'s update is in the client's file");
        assert_eq!(name(&remote), Some(Json::from(format!("u{id}"))), "record {id}'s update is on the server");
    }

    // No duplicates: the counter holds exactly the increments the client committed.
    let (local_counter, _) = local.get("0").expect("the counter is in the client's file");
    let (remote_counter, counter_version) = remote.get("0").expect("the counter is on the server");
    assert!(
        gold(local_counter) >= all.incs,
        "{} increments reported, the client's file holds {}",
        all.incs,
        gold(local_counter)
    );
    assert_eq!(
        gold(remote_counter),
        gold(local_counter),
        "the server's counter against the increments committed locally ({} reported)",
        all.incs
    );
    assert_eq!(*counter_version, gold(remote_counter) + 1, "one server version per increment");

    // Each created record has version 1 unless updated, one change per version; the client
    // and the server agree on everything.
    let mut updated_twice = 0;
    for (id, (m, version)) in remote.iter().filter(|(id, _)| id.as_str() != "0") {
        let was_updated = m.get("name").and_then(Json::as_str).is_some_and(|n| n.starts_with('u'));
        if was_updated {
            assert!(*version <= 2, "record {id} has version {version}: a write applied twice");
            if *version == 2 {
                updated_twice += 1;
            }
        } else {
            assert_eq!(*version, 1, "record {id} was created once and never updated: {m:?}");
        }
        assert_eq!(changes.get(id).copied(), Some(*version), "record {id}: one change-log entry per version");
    }
    assert_eq!(changes.get("0").copied(), Some(*counter_version), "the counter: one change-log entry per version");
    let diff: Vec<_> = local
        .keys()
        .chain(remote.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| local.get(*k) != remote.get(*k))
        .take(5)
        .map(|k| format!("{k}: client {:?} server {:?}", local.get(k), remote.get(k)))
        .collect();
    assert!(diff.is_empty(), "the client's file and the server differ (first 5):\n{}", diff.join("\n"));
    assert!(after_pull == local, "a full sync afterwards changed the client's file");
    eprintln!(
        "{} rounds in {:?} ({} killed with pushes in flight): {} creates, {} updates ({} applied as a second \
         version), {} increments committed ({} in the file), {} records on the server",
        ROUNDS,
        started.elapsed(),
        rounds_killed_in_flight,
        all.committed.len(),
        all.updated.len(),
        updated_twice,
        all.incs,
        gold(local_counter),
        remote.len()
    );
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&server_dir);
}
