//! Crash safety of the `local` route: a child process writes through it and is killed with
//! SIGKILL at pseudo-random points; after each kill the data file opens cleanly and every
//! write whose `WriteSettled` reported success is in it. Each round continues on the same
//! file, so recovery after a kill (and a kill during recovery) is exercised too.
//!
//! The child is this test binary itself, re-run with `ATOMA_CRASH_CHILD=<dir>` and
//! `--exact child_writer`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use atoma::io::LocalExecutor;
use atoma::prelude::*;
use atoma::runtime::AtomaStatus;
use bevy_ecs::prelude::*;
use common::{Player, player};

const CHILD_ENV: &str = "ATOMA_CRASH_CHILD";
/// The record the child increments once per frame (creates use ids from 1 up).
const COUNTER: u32 = 0;
/// Creates per frame.
const BATCH: u32 = 50;
/// The child stops adding writes while this many are unanswered.
const MAX_PENDING: usize = 200;

fn data_file(dir: &Path) -> PathBuf {
    dir.join("atoma.redb")
}

/// Not a test on its own: the child process of the test below. Writes `BATCH` new records
/// and one increment every frame, forever (a minute at most), and prints `ACK <id>` /
/// `INC` for every write that settled successfully — only after it settled.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        // The leading newline ends the `test child_writer ... ` libtest prints first.
        writeln!(out, "\n{line}").expect("stdout");
        out.flush().expect("stdout");
    };
    let mut app = common::app(AtomaPlugin::default().data_dir(PathBuf::from(dir)), |app| {
        app.add_store::<Player>(StoreConfig::default().without_history());
    });
    let errors = app.world().resource::<AtomaStatus>().errors.clone();
    if !errors.is_empty() {
        say(format!("ERROR start-up: {errors:?}"));
        return;
    }
    let store = app.world().resource::<Store<Player>>();
    let mut next = store.iter().map(|p| p.id).max().unwrap_or(COUNTER) + 1;
    let has_counter = store.contains(&COUNTER);
    say(format!("READY {next} {}", store.len()));
    let mut pending = 0usize;
    let mut counter_created = None;
    if !has_counter {
        let ticket = app
            .world_mut()
            .run_system_cached(|mut w: Writer<Player>| w.create(player(COUNTER, "counter", 0)))
            .expect("runs");
        counter_created = Some(ticket);
        pending += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if pending < MAX_PENDING {
            app.world_mut()
                .run_system_cached_with(
                    |In(first): In<u32>, mut w: Writer<Player>| {
                        for id in first..first + BATCH {
                            w.create(player(id, &format!("p{id}"), i64::from(id % 10)));
                        }
                        w.inc(COUNTER, "gold", 1);
                    },
                    next,
                )
                .expect("runs");
            next += BATCH;
            pending += BATCH as usize + 1;
            say(format!("SENT {}", next - 1));
        }
        app.update();
        for s in common::settled::<Player>(&mut app) {
            pending = pending.saturating_sub(1);
            match (&s.result, s.id) {
                (Ok(_), Some(COUNTER)) if Some(s.ticket) == counter_created => say("COUNTER".into()),
                (Ok(_), Some(COUNTER)) => say("INC".into()),
                (Ok(_), Some(id)) => say(format!("ACK {id}")),
                (r, id) => say(format!("FAIL {id:?} {r:?}")),
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

fn spawn_child(dir: &Path) -> (Child, Receiver<String>, std::thread::JoinHandle<String>) {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
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

#[derive(Default)]
struct Round {
    ready: Option<(u32, usize)>,
    acked: Vec<u32>,
    incs: u64,
    max_sent: u32,
    failures: Vec<String>,
}

impl Round {
    fn take(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ACK"), Some(id), _) => self.acked.push(id.parse().expect("an id")),
            (Some("INC"), ..) => self.incs += 1,
            (Some("SENT"), Some(id), _) => self.max_sent = id.parse().expect("an id"),
            (Some("READY"), Some(next), Some(len)) => {
                self.ready = Some((next.parse().expect("an id"), len.parse().expect("a count")));
            }
            (Some("FAIL" | "ERROR"), ..) => self.failures.push(line.to_owned()),
            _ => {}
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_points() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("atoma-test-{}-{}", std::process::id(), "crash"));
    let _ = std::fs::remove_dir_all(&dir);
    let seed = std::env::var("ATOMA_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_A70A_u64);
    let mut rng = Rng(seed);
    let rounds = 10;
    let mut acked: BTreeSet<u32> = BTreeSet::new();
    let mut incs_acked = 0u64;
    let mut on_disk_max: Option<u32> = None;
    let mut on_disk_count = 0usize;
    let mut rounds_with_acks = 0;
    let mut rounds_killed_mid_write = 0;
    let started = Instant::now();

    for round in 0..rounds {
        // Every fourth round is killed soon after it starts: maybe while redb recovers the
        // file from the previous kill, before the app is up.
        let early = round % 4 == 3;
        let delay = Duration::from_millis(if early { rng.between(1, 60) } else { rng.between(20, 400) });
        let ctx = format!("seed {seed:#x}, round {round}, kill after {delay:?}{}", if early { " (early)" } else { "" });
        let (mut child, lines, stderr) = spawn_child(&dir);
        let mut r = Round::default();
        let spawned = Instant::now();
        if !early {
            // Wait for the app to be up, then count the delay.
            while r.ready.is_none() {
                match lines.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => r.take(&line),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "{ctx}: the child never got ready: {:?}; stderr:\n{}",
                            r.failures,
                            stderr.join().unwrap_or_default()
                        );
                    }
                }
            }
        }
        let kill_at = Instant::now() + delay;
        loop {
            let left = kill_at.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => r.take(&line),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    panic!("{ctx}: the child exited on its own; stderr:\n{}", stderr.join().unwrap_or_default());
                }
            }
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "{ctx}: the child died before the kill");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaped");
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "{ctx}: killed by SIGKILL");
        }
        // Everything it printed before dying (the channel closes at EOF).
        for line in lines.iter() {
            r.take(&line);
        }
        let child_err = stderr.join().unwrap_or_default();
        assert!(r.failures.is_empty(), "{ctx}: {:?}\nstderr:\n{child_err}", r.failures);
        if let Some((next, len)) = r.ready {
            // The restart loaded every record the file held, and carries on after them.
            assert_eq!(len, on_disk_count, "{ctx}: the child loaded every stored record");
            assert_eq!(next, on_disk_max.map_or(1, |m| m + 1), "{ctx}: ids continue from what exists");
        }
        if !r.acked.is_empty() {
            rounds_with_acks += 1;
        }
        let max_acked = r.acked.iter().copied().max().unwrap_or(0);
        if r.max_sent > max_acked {
            rounds_killed_mid_write += 1;
        }
        acked.extend(r.acked.iter().copied());
        incs_acked += r.incs;

        // The file opens cleanly, reads in full, and holds every acknowledged write.
        let exec = LocalExecutor::open(data_file(&dir))
            .unwrap_or_else(|e| panic!("{ctx}: the data file does not open after the kill: {e}"));
        let records = exec.load_now("players").unwrap_or_else(|e| panic!("{ctx}: the data file does not read: {e}"));
        let mut ids = BTreeSet::new();
        let mut counter = None;
        for (m, version) in &records {
            let p: Player = serde_json::from_value(serde_json::Value::Object({
                let mut m = m.clone();
                let id = m.get("id").and_then(|v| v.as_str()).and_then(|s| s.parse::<u32>().ok());
                m.insert("id".into(), id.expect("a numeric id").into());
                m
            }))
            .unwrap_or_else(|e| panic!("{ctx}: a stored record does not read back: {e}: {m:?}"));
            assert!(*version >= 1, "{ctx}: {p:?} has version {version}");
            if p.id == COUNTER {
                counter = Some((p.gold, *version));
            } else {
                assert_eq!(p, player(p.id, &format!("p{}", p.id), i64::from(p.id % 10)), "{ctx}: stored intact");
                assert_eq!(*version, 1, "{ctx}: record {} was written once", p.id);
            }
            ids.insert(p.id);
        }
        let missing: Vec<u32> = acked.difference(&ids).copied().take(10).collect();
        assert!(missing.is_empty(), "{ctx}: acknowledged but not on disk (first 10): {missing:?}");
        if incs_acked > 0 {
            let (gold, version) = counter.unwrap_or_else(|| panic!("{ctx}: the counter is missing"));
            assert!(
                u64::try_from(gold).expect("not negative") >= incs_acked,
                "{ctx}: {incs_acked} increments acknowledged, the counter holds {gold}"
            );
            assert_eq!(u64::try_from(gold).expect("not negative") + 1, version, "{ctx}: one version per increment");
        }
        on_disk_max = ids.iter().copied().filter(|id| *id != COUNTER).max().or(on_disk_max);
        on_disk_count = ids.len();
        drop(exec);
        eprintln!(
            "round {round}: up {:?}, {} acked ({} in total), {} on disk, {} increments acked",
            spawned.elapsed(),
            r.acked.len(),
            acked.len(),
            ids.len(),
            incs_acked
        );
    }
    assert!(rounds_with_acks >= rounds / 2, "too few rounds got as far as writing: {rounds_with_acks}");
    assert!(rounds_killed_mid_write >= 1, "no kill landed while writes were unanswered");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
