//! Writes as messages, reduced once per frame into one commit per store; all-settled results;
//! the invariants of DESIGN.md §6, proved with `AtomaMetrics`.

mod common;

use atoma::Query;
use atoma::prelude::*;
use atoma::runtime::{Route, RoutePolicy};
use bevy_app::{App, Update};
use bevy_ecs::prelude::*;
use bevy_ecs::system::RunSystemOnce;
use common::*;

fn metrics(app: &App) -> atoma::runtime::StoreMetrics {
    app.world().resource::<AtomaMetrics>().store("players")
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

#[derive(Resource, Default)]
struct Tickets(Vec<Ticket>);

#[test]
fn a_frame_of_intents_is_one_commit_and_every_intent_settles() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default().index(IndexSpec::ordered("level")).index(IndexSpec::eq("name")));
        app.init_resource::<Tickets>();
        app.add_systems(Update, |mut w: Writer<Player>, mut t: ResMut<Tickets>, mut done: Local<bool>| {
            if !*done {
                *done = true;
                for i in 0..100 {
                    t.0.push(w.create(player(i, &format!("p{i}"), i64::from(i % 10))));
                }
                t.0.push(w.create(player(5, "dup", 1)));
                t.0.push(w.update(3, |p| p.level = 99));
                t.0.push(w.inc(4, "gold", 7));
                t.0.push(w.delete(9));
            }
        });
    });
    app.update();
    assert_eq!(metrics(&app).commits, 1, "104 intents, one commit");
    assert_eq!(metrics(&app).index_updates, 1);
    assert_eq!(store(&app).len(), 99);
    assert_eq!(store(&app).get(&3).map(|p| p.level), Some(99));
    assert_eq!(store(&app).get(&4).map(|p| p.gold), Some(7));
    let results = settle::<Player>(&mut app, 104);
    assert_eq!(results.len(), 104);
    let tickets = app.world().resource::<Tickets>().0.clone();
    let dup = results.iter().find(|s| s.ticket == tickets[100]).expect("duplicate settled");
    assert!(matches!(dup.result, Err(WriteFailure::Rejected(atoma::core::WriteError::Duplicate(5)))), "{dup:?}");
    assert_eq!(results.iter().filter(|s| s.is_ok()).count(), 103);
    // Acks wrote the executor's versions back in a later commit.
    assert_eq!(store(&app).entry(&1).map(|e| e.version), Some(1));
    assert_eq!(
        store(&app).entry(&3).map(|e| e.version),
        Some(2),
        "create then update of one record: versions 1 then 2"
    );
    // Idle frames commit nothing.
    let commits = metrics(&app).commits;
    for _ in 0..5 {
        app.update();
    }
    assert_eq!(metrics(&app).commits, commits);
}

fn remote_app(remote: Remote, policy: RoutePolicy) -> App {
    app(AtomaPlugin::in_memory().route("remote", Route::new(remote).with_policy(policy)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    })
}

#[test]
fn a_cache_miss_update_is_one_commit_with_its_hydrate() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut app = remote_app(remote, RoutePolicy::default());
    assert!(store(&app).is_empty(), "a remote route loads nothing at start");
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.level += 1);
        })
        .expect("runs");
    let results = settle::<Player>(&mut app, 1);
    assert!(results[0].is_ok(), "{:?}", results[0].result);
    let m = metrics(&app);
    assert_eq!(m.cache_miss_fetches, 1);
    // Seed 001: the hydrate and the update land in one commit (2 → 1); the ack's writeback
    // is the second.
    assert_eq!(m.commits, 2, "{m:?}");
    assert_eq!(store(&app).entry(&1).map(|e| (e.record.level, e.version)), Some((4, 2)));
}

#[test]
fn update_many_over_missing_ids_is_one_commit_not_n_plus_one() {
    let remote = Remote::default();
    let records: Vec<Player> = (0..50).map(|i| player(i, "x", 1)).collect();
    seed_remote(&remote.0, &records);
    let mut app = remote_app(remote, RoutePolicy::default());
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update_many(0..50, |p| p.level = 7);
            w.update(999, |p| p.level = 7);
        })
        .expect("runs");
    app.update();
    // Wait for the fetch (one query for all 51 ids) and its commit.
    assert!(run_until(&mut app, |app| metrics(app).commits >= 1));
    let m = metrics(&app);
    assert_eq!(m.cache_miss_fetches, 1, "one fetch for all missing ids");
    assert_eq!(m.commits, 1, "hydrate of 50 + 51 updates: one commit");
    assert!(store(&app).iter().all(|p| p.level == 7));
    let results = settle::<Player>(&mut app, 51);
    let missing = results.iter().find(|s| s.id == Some(999)).expect("999 settled");
    assert!(matches!(missing.result, Err(WriteFailure::Rejected(atoma::core::WriteError::NotFound(999)))));
}

#[test]
fn a_route_that_is_not_optimistic_applies_writes_on_confirmation() {
    // One write, and a frame large enough for the commit to run on its helper thread (from
    // 16 changes in debug builds, 2,048 in release ones).
    for n in [1u32, 40] {
        let remote = Remote::default();
        let mut app = remote_app(remote.clone(), RoutePolicy { optimistic: false, ..RoutePolicy::default() });
        app.world_mut()
            .run_system_once(move |mut w: Writer<Player>| {
                for i in 0..n {
                    w.create(player(i, "x", i64::from(i)));
                }
            })
            .expect("runs");
        app.update();
        assert!(store(&app).is_empty(), "{n} writes: nothing applied before the executor confirmed");
        let results = settle::<Player>(&mut app, n as usize);
        assert!(results.iter().all(WriteSettled::is_ok), "{results:?}");
        assert_eq!(store(&app).len(), n as usize, "{n} writes: applied on confirmation");
        for i in 0..n {
            assert_eq!(store(&app).entry(&i).map(|e| (e.record.level, e.version)), Some((i64::from(i), 1)));
        }
        // The executor holds them too: an app whose route loads from it at start sees them.
        let route = Route::new(remote.0.clone());
        let executor_view = common::app(AtomaPlugin::in_memory().route("remote", route), |a| {
            a.add_store::<Player>(StoreConfig::default().route("remote"));
        });
        assert_eq!(store(&executor_view).len(), n as usize, "{n} writes reached the executor");
    }
}

#[test]
fn a_route_that_forbids_implicit_fetch_fails_the_write_clearly() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut app = remote_app(remote, RoutePolicy { optimistic: true, implicit_fetch: false, stores_as_sent: false });
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.level += 1);
        })
        .expect("runs");
    let results = settle::<Player>(&mut app, 1);
    let err = results[0].result.as_ref().expect_err("cache miss");
    assert!(err.to_string().contains("forbids fetching it"), "{err}");
    assert_eq!(metrics(&app).commits, 0);
    assert_eq!(metrics(&app).cache_miss_fetches, 0);
}

#[test]
fn a_failed_executor_rolls_back_exactly() {
    let mut app = app(AtomaPlugin::in_memory().route("down", Route::new(Down)), |app| {
        app.add_store::<Player>(StoreConfig::default().index(IndexSpec::eq("name")));
    });
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "ann", 3));
        })
        .expect("runs");
    settle::<Player>(&mut app, 1);
    let before: Vec<Player> = store(&app).iter().cloned().collect();
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.with(WriteOptions::default().route("down")).update(1, |p: &mut Player| p.name = "changed".into());
            w.with(WriteOptions::default().route("down")).create(player(2, "bob", 1));
        })
        .expect("runs");
    app.update();
    assert_eq!(store(&app).get(&1).map(|p| p.name.as_str()), Some("changed"), "optimistic");
    let results = settle::<Player>(&mut app, 2);
    assert!(results.iter().all(|r| matches!(r.result, Err(WriteFailure::Unavailable { .. }))), "{results:?}");
    app.update();
    let after: Vec<Player> = store(&app).iter().cloned().collect();
    assert_eq!(after, before, "rolled back exactly");
    let q = Query::filter(field("name").eq("changed"));
    assert_eq!(store(&app).query(&q).expect("runs").items.len(), 0, "the index was rolled back too");
}

#[test]
fn an_executor_conflict_writes_back_the_current_value() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut reader_app = remote_app(remote.clone(), RoutePolicy::default());
    reader_app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut reader_app, |app| store(app).contains(&1)));
    // Another client changes the record (version 2).
    let mut other = remote_app(remote, RoutePolicy::default());
    other
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "theirs".into());
        })
        .expect("runs");
    assert!(settle::<Player>(&mut other, 1)[0].is_ok());
    // Ours is based on version 1: conflict, rollback, the server's copy written back.
    reader_app
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "mine".into());
        })
        .expect("runs");
    let results = settle::<Player>(&mut reader_app, 1);
    match &results[0].result {
        Err(WriteFailure::Remote { error, current: Some(cur), .. }) => {
            assert_eq!(error.code, "CONFLICT");
            assert_eq!((cur.record.name.as_str(), cur.version), ("theirs", 2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    reader_app.update();
    assert_eq!(store(&reader_app).entry(&1).map(|e| (e.record.name.clone(), e.version)), Some(("theirs".into(), 2)));
}

#[test]
fn validation_failures_are_settled_errors_not_panics() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default().validate(|p: &Player| {
            if p.level < 0 { Err(format!("level of {} may not be negative", p.id)) } else { Ok(()) }
        }));
    });
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "ann", -1));
            w.create(player(2, "bob", 1));
        })
        .expect("runs");
    let results = settle::<Player>(&mut app, 2);
    let bad = results.iter().find(|r| r.id == Some(1)).expect("settled");
    assert_eq!(
        bad.result.as_ref().map_err(ToString::to_string).expect_err("invalid"),
        "invalid write: level of 1 may not be negative"
    );
    assert!(!store(&app).contains(&1) && store(&app).contains(&2));
}

/// A record whose serialization panics for one name (a stand-in for a buggy `Serialize`).
#[derive(atoma::Record, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[record(store = "fragile")]
struct Fragile {
    id: u32,
    #[serde(serialize_with = "panics_on_boom")]
    name: String,
}

fn panics_on_boom<S: serde::Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
    assert!(name != "boom", "this record cannot be serialized");
    s.serialize_str(name)
}

#[test]
fn a_write_that_cannot_be_encoded_fails_and_rolls_back_and_later_writes_go_through() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Fragile>(StoreConfig::default());
    });
    let write = |app: &mut App, r: Fragile| {
        app.world_mut()
            .run_system_cached_with(|In(r): In<Fragile>, mut w: Writer<Fragile>| w.create(r), r)
            .expect("runs")
    };
    let boom = write(&mut app, Fragile { id: 1, name: "boom".into() });
    app.update();
    let results = settle::<Fragile>(&mut app, 1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].ticket, boom);
    assert!(results[0].result.is_err(), "{:?}", results[0]);
    app.update();
    assert!(app.world().resource::<Store<Fragile>>().get(&1).is_none(), "rolled back");
    // The flush thread lives on: the next write is encoded and acked.
    let ok = write(&mut app, Fragile { id: 2, name: "fine".into() });
    app.update();
    let results = settle::<Fragile>(&mut app, 1);
    assert_eq!(results.iter().map(|r| (r.ticket, r.result.is_ok())).collect::<Vec<_>>(), vec![(ok, true)]);
    assert_eq!(app.world().resource::<Store<Fragile>>().entry(&2).map(|e| e.version), Some(1));
}

/// A memory executor that also keeps the client time of every write it is sent.
#[derive(Clone, Default)]
struct Clocked {
    inner: Remote,
    times: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
}

impl atoma::io::Executor for Clocked {
    fn query(
        &self,
        req: atoma::protocol::QueryRequest,
    ) -> atoma::io::BoxFuture<Result<atoma::protocol::QueryResult, atoma::protocol::StandardError>> {
        self.inner.query(req)
    }
    fn write(
        &self,
        req: atoma::protocol::WriteRequest,
    ) -> atoma::io::BoxFuture<Result<atoma::protocol::WriteResult, atoma::protocol::StandardError>> {
        if let Ok(mut t) = self.times.lock() {
            t.extend(req.entries.iter().map(|e| e.item.meta.client_time_ms));
        }
        self.inner.write(req)
    }
}

/// Records the next run of the writing system creates.
#[derive(Resource, Default)]
struct Pending(Vec<Player>);

/// The client time is read once per run of the writing system: every write of a run carries
/// the wall clock of that run, and a later run reads the clock again.
#[test]
fn client_time_is_the_wall_clock_of_each_run() {
    let clocked = Clocked::default();
    let times = clocked.times.clone();
    let mut app = app(AtomaPlugin::in_memory().route("clocked", Route::new(clocked)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("clocked"));
        app.init_resource::<Pending>();
        app.add_systems(Update, |mut w: Writer<Player>, mut pending: ResMut<Pending>| {
            for p in pending.0.drain(..) {
                w.create(p);
            }
        });
    });
    app.world_mut().resource_mut::<Pending>().0 = (0..3).map(|i| player(i, "a", 1)).collect();
    let before = atoma::runtime::now_ms();
    app.update();
    let after = atoma::runtime::now_ms();
    settle::<Player>(&mut app, 3);
    std::thread::sleep(std::time::Duration::from_millis(5));
    app.world_mut().resource_mut::<Pending>().0.push(player(10, "b", 1));
    app.update();
    settle::<Player>(&mut app, 1);
    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    assert_eq!(times.len(), 4, "four writes reached the executor: {times:?}");
    assert!(times[..3].iter().all(|t| *t == times[0]), "one run, one clock reading: {times:?}");
    assert!((before..=after).contains(&times[0]), "{before} <= {} <= {after}", times[0]);
    assert!(times[3] >= times[0] + 5, "the next run read the clock again: {times:?}");
}
