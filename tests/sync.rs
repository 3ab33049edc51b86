//! Sync end to end with the real atoma-server on 127.0.0.1: two clients converge through the
//! outbox, push, notify and pull lanes; offline writes are pushed when the server is back;
//! conflicts become dead letters with the server's copy written back; barriers; the per-frame
//! apply budget.

mod common;

use std::time::Duration;

use atoma::io::{SyncConfig, SyncEvent};
use atoma::prelude::*;
use atoma::runtime::{SyncControl, SyncStatus};
use bevy_app::App;
use bevy_ecs::message::Messages;
use bevy_ecs::system::RunSystemOnce;
use common::server::{TestServer, temp_dir};
use common::*;

fn client(url: &str, dir: &std::path::Path, budget: usize) -> App {
    let mut config = SyncConfig::new(url);
    config.pull_interval = Duration::from_millis(500);
    config.retry.base = Duration::from_millis(20);
    config.retry.max = Duration::from_millis(200);
    config.reconnect.base = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    app(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"), |app| {
        app.add_store::<Player>(StoreConfig::default().index(IndexSpec::ordered("level")).apply_budget(budget));
    })
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

fn status(app: &App) -> SyncStatus {
    app.world().resource::<SyncStatus>().clone()
}

/// Runs both apps until `done` holds (at most 10 s).
fn converge(a: &mut App, b: &mut App, mut done: impl FnMut(&App, &App) -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        a.update();
        b.update();
        if done(a, b) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn snapshot(app: &App) -> Vec<(u32, String, i64, u64)> {
    let mut v: Vec<_> =
        store(app).table().iter().map(|e| (e.record.id, e.record.name.clone(), e.record.gold, e.version)).collect();
    v.sort();
    v
}

#[test]
fn two_clients_converge_through_the_server() {
    let server = TestServer::start("", Some(&temp_dir("sync-server-1")));
    let mut a = client(&server.url, &temp_dir("sync-a-1"), 2000);
    let mut b = client(&server.url, &temp_dir("sync-b-1"), 2000);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            for i in 0..20 {
                w.create(player(i, &format!("p{i}"), i64::from(i)));
            }
        })
        .expect("runs");
    // Local-first: the writes settle as soon as they are in the local file and the outbox.
    assert!(settle::<Player>(&mut a, 20).iter().all(|s| s.is_ok()));
    assert!(converge(&mut a, &mut b, |_, b| store(b).len() == 20), "b pulls a's records (woken by the notification)");
    assert!(
        converge(&mut a, &mut b, |a, _| store(a).entry(&0).is_some_and(|e| e.version == 1)),
        "a's acks wrote back versions"
    );

    // Concurrent updates of different records, a delete, and a commutative counter on both.
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "changed by a".into());
            w.delete(2);
            w.inc(3, "gold", 5);
        })
        .expect("runs");
    b.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(4, |p| p.name = "changed by b".into());
            w.inc(3, "gold", 7);
        })
        .expect("runs");
    assert!(
        converge(&mut a, &mut b, |a, b| {
            let (sa, sb) = (snapshot(a), snapshot(b));
            sa == sb && sa.iter().any(|r| r.0 == 3 && r.2 == 12) && !store(a).contains(&2)
        }),
        "converged: a {:?}\nb {:?}",
        snapshot(&a),
        snapshot(&b)
    );
    assert_eq!(store(&b).get(&1).map(|p| p.name.as_str()), Some("changed by a"));
    assert_eq!(store(&a).get(&4).map(|p| p.name.as_str()), Some("changed by b"));
    assert_eq!(status(&a).pending + status(&a).in_flight, 0);
}

#[test]
fn a_conflict_becomes_a_dead_letter_and_the_server_copy_wins_locally() {
    let server = TestServer::start("", Some(&temp_dir("sync-server-2")));
    let mut a = client(&server.url, &temp_dir("sync-a-2"), 2000);
    let mut b = client(&server.url, &temp_dir("sync-b-2"), 2000);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "first", 1));
        })
        .expect("runs");
    assert!(
        converge(&mut a, &mut b, |a, b| store(b).contains(&1) && store(a).entry(&1).is_some_and(|e| e.version == 1))
    );
    // Both change record 1, based on version 1, in the same instant: whichever push reaches
    // the server second conflicts. That write becomes a dead letter and its client takes the
    // server's copy, so both end with the winner's value.
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "from a".into());
        })
        .expect("runs");
    b.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "from b".into());
        })
        .expect("runs");
    let dead = |app: &App| status(app).dead_letters.len();
    assert!(converge(&mut a, &mut b, |a, b| dead(a) + dead(b) == 1), "exactly one write loses");
    assert!(
        converge(&mut a, &mut b, |a, b| snapshot(a) == snapshot(b) && status(a).pending + status(b).pending == 0),
        "a {:?} b {:?}",
        snapshot(&a),
        snapshot(&b)
    );
    let (winner, loser) = if dead(&a) == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let won = store(winner).get(&1).map(|p| p.name.clone());
    assert!(won.as_deref().is_some_and(|n| n == "from a" || n == "from b"));
    assert_eq!(store(loser).get(&1).map(|p| p.name.clone()), won, "the loser took the server's copy");
    assert_eq!(store(loser).entry(&1).map(|e| e.version), Some(2));
    let letter = status(loser).dead_letters[0].clone();
    assert_eq!(letter.error.code, "CONFLICT");
    // The game drops it.
    let seq = letter.item.seq;
    assert!(loser.world_mut().run_system_once(move |c: SyncControl| c.drop_dead(seq)).expect("runs"));
    assert!(run_until(loser, |l| status(l).dead_letters.is_empty()));
}

#[test]
fn offline_writes_are_pushed_when_the_server_is_back() {
    let server_dir = temp_dir("sync-server-3");
    let mut server = TestServer::start("", Some(&server_dir));
    let url = server.url.clone();
    let addr = server.server.as_ref().map(|s| s.addr).expect("running");
    let mut a = client(&url, &temp_dir("sync-a-3"), 2000);
    a.update();
    server.stop();
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            for i in 0..10 {
                w.create(player(i, "offline", 1));
            }
        })
        .expect("runs");
    assert!(settle::<Player>(&mut a, 10).iter().all(|s| s.is_ok()), "offline writes settle locally");
    for _ in 0..50 {
        a.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status(&a).pending + status(&a).in_flight, 10, "queued while the server is away");
    // The server comes back on the same address and data.
    let back = TestServer::start_at("", &server_dir, addr);
    let mut b = client(&back.url, &temp_dir("sync-b-3"), 2000);
    assert!(converge(&mut a, &mut b, |a, b| store(b).len() == 10
        && status(a).pending == 0
        && status(a).in_flight == 0));
}

#[test]
fn a_barrier_waits_for_acks_and_the_pull_back() {
    let server = TestServer::start("", Some(&temp_dir("sync-server-4")));
    let mut a = client(&server.url, &temp_dir("sync-a-4"), 2000);
    a.update();
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create_many((0..50).map(|i| player(i, "x", 1)));
        })
        .expect("runs");
    a.update();
    let id = a.world_mut().run_system_cached(|mut c: SyncControl| c.barrier()).expect("runs");
    assert!(run_until(&mut a, |a| status(a).reached(id)));
    assert_eq!(status(&a).pending + status(&a).in_flight, 0);
    assert!(store(&a).table().iter().all(|e| e.version == 1), "every write acked and written back");
    let events: Vec<SyncEvent> = a.world_mut().resource_mut::<Messages<SyncEvent>>().drain().collect();
    assert!(events.iter().any(|e| matches!(e, SyncEvent::BarrierReached { id: x } if *x == id)));
}

#[test]
fn a_large_pull_is_applied_over_several_frames() {
    let server = TestServer::start("", Some(&temp_dir("sync-server-5")));
    let mut a = client(&server.url, &temp_dir("sync-a-5"), 5000);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create_many((0..3000).map(|i| player(i, "bulk", 1)));
        })
        .expect("runs");
    let id = {
        a.update();
        a.world_mut().run_system_cached(|mut c: SyncControl| c.barrier()).expect("runs")
    };
    assert!(run_until(&mut a, |a| status(a).reached(id)));
    // A fresh client with a budget of 500 changes per frame pulls 3000 records.
    let mut b = client(&server.url, &temp_dir("sync-b-5"), 500);
    let mut frames_applying = 0;
    let mut last = 0;
    let start = std::time::Instant::now();
    let mut done = false;
    while !done && start.elapsed() < Duration::from_secs(30) {
        b.update();
        let n = store(&b).len();
        if n > last {
            assert!(n - last <= 500, "at most the budget per frame");
            frames_applying += 1;
            last = n;
        }
        done = n == 3000;
    }
    assert!(done, "pulled {last} of 3000");
    assert!(frames_applying >= 6, "{frames_applying} frames");
}

#[test]
fn a_second_process_on_the_same_outbox_gets_a_clear_lock_error() {
    let server = TestServer::start("", None);
    let dir = temp_dir("sync-lock");
    let mut a = client(&server.url, &dir, 2000);
    a.update();
    // The data file (records and outbox) is held by `a`.
    let second = AtomaPlugin::default().data_dir(&dir).sync(SyncConfig::new(&server.url)).open();
    match second {
        Err(atoma::io::OpenError::Locked { path }) => assert!(path.ends_with("atoma.redb")),
        Err(other) => panic!("expected a lock error, got {other}"),
        Ok(_) => panic!("a second open of a held outbox must fail"),
    }
    drop(a);
    assert!(AtomaPlugin::default().data_dir(&dir).open().is_ok(), "free again once the first closed");
}

fn client_in_mode(url: &str, dir: &std::path::Path, mode: atoma::io::SyncMode) -> App {
    let mut config = SyncConfig::new(url).mode(mode);
    config.pull_interval = Duration::from_millis(100);
    app(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"), |app| {
        app.add_store::<Player>(StoreConfig::default());
    })
}

#[test]
fn modes_run_only_their_lanes() {
    use atoma::io::SyncMode;
    let server = TestServer::start("", None);
    let mut writer = client_in_mode(&server.url, &temp_dir("sync-mode-w"), SyncMode::PushOnly);
    let mut puller = client_in_mode(&server.url, &temp_dir("sync-mode-p"), SyncMode::PullOnly);
    let mut listener = client_in_mode(&server.url, &temp_dir("sync-mode-s"), SyncMode::SubscribeOnly);
    // The listener's stream must be open before the write it should hear about.
    assert!(run_until(&mut listener, |l| status(l).connected));
    writer
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "pushed", 1));
        })
        .expect("runs");
    // Push-only pushes; pull-only pulls it (periodically, no notifications); subscribe-only
    // hears the notification but pulls nothing.
    let start = std::time::Instant::now();
    let mut heard = false;
    while start.elapsed() < Duration::from_secs(10) {
        writer.update();
        puller.update();
        listener.update();
        heard |= listener.world_mut().resource_mut::<Messages<SyncEvent>>().drain().any(
            |e| matches!(e, SyncEvent::Notified { ref resources, .. } if resources.iter().any(|r| r == "players")),
        );
        if heard && store(&puller).contains(&1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(store(&puller).contains(&1), "pull-only pulled");
    assert!(heard, "subscribe-only was notified");
    assert!(!store(&listener).contains(&1), "subscribe-only pulls nothing");
    assert!(!status(&puller).connected, "pull-only opens no stream");
    // Pull-only never pushes: its write stays in its outbox.
    puller
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(2, "stays", 1));
        })
        .expect("runs");
    for _ in 0..100 {
        puller.update();
        writer.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(status(&puller).pending, 1);
    assert!(!store(&writer).contains(&2), "push-only pulls nothing either");
}

#[test]
fn a_pulled_record_the_store_refuses_is_reported_and_the_rest_apply() {
    let server = TestServer::start("", Some(&temp_dir("sync-server-9")));
    let mut a = client(&server.url, &temp_dir("sync-a-9"), 2000);
    // B's inbound transform refuses levels above 50 (as a newer schema might).
    let mut config = SyncConfig::new(&server.url);
    config.pull_interval = Duration::from_millis(200);
    let mut b =
        app(AtomaPlugin::default().data_dir(temp_dir("sync-b-9")).sync(config).default_route("sync"), |app| {
            app.add_store::<Player>(StoreConfig::default().inbound(|p: Player| {
                if p.level > 50 { Err(format!("level {} is out of range", p.level)) } else { Ok(p) }
            }));
        });
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "fine", 10));
            w.create(player(2, "odd", 99));
            w.create(player(3, "fine too", 20));
        })
        .expect("runs");
    let mut events = Vec::new();
    assert!(converge(&mut a, &mut b, |_, b| store(b).len() == 2));
    assert!(run_until(&mut b, |b| {
        events.extend(b.world_mut().resource_mut::<Messages<SyncEvent>>().drain());
        events.iter().any(|e| matches!(e, SyncEvent::Undecodable { .. }))
    }));
    let refused: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Undecodable { resource, id, error } => Some((resource.clone(), id.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].0.as_str(), refused[0].1.as_str()), ("players", "2"));
    assert!(refused[0].2.contains("out of range"), "{}", refused[0].2);
    assert!(store(&b).get(&1).is_some() && store(&b).get(&3).is_some() && store(&b).get(&2).is_none());
    assert!(status(&b).last_error.is_some_and(|e| e.contains("record 2")));
}
