//! Reads through a store's route: fetch policies, merge policies, `list` aligning deletions,
//! local fallback when the executor fails, `ReadStarted` / `ReadFinished` with durations.

mod common;

use atoma::Query;
use atoma::prelude::*;
use atoma::runtime::{ReadSource, ReadStarted, Route};
use bevy_app::App;
use bevy_ecs::message::Messages;
use common::*;

fn finished(app: &mut App) -> Vec<ReadFinished<Player>> {
    app.world_mut().resource_mut::<Messages<ReadFinished<Player>>>().drain().collect()
}

fn wait_read(app: &mut App, ticket: Ticket) -> Vec<ReadFinished<Player>> {
    let mut got = Vec::new();
    run_until(app, |app| {
        got.extend(finished(app).into_iter().filter(|r| r.ticket == ticket));
        got.iter().any(|r| r.source != ReadSource::Local)
    });
    got
}

fn remote_app(remote: &Remote) -> App {
    app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote").index(IndexSpec::ordered("level")));
    })
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

#[test]
fn network_only_merges_remote_records_and_reports_duration() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3), player(2, "bob", 9), player(3, "cy", 12)]);
    let mut app = remote_app(&remote);
    let ticket = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(Query::filter(field("level").gte(5)).sort_asc("level"), FetchPolicy::NetworkOnly)
        })
        .expect("runs");
    let started: Vec<ReadStarted> = app.world_mut().resource_mut::<Messages<ReadStarted>>().drain().collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].route, "remote");
    let done = wait_read(&mut app, ticket);
    assert_eq!(done.len(), 1, "network-only: no local answer first");
    assert_eq!(done[0].source, ReadSource::Remote);
    assert_eq!(done[0].ids, [2, 3]);
    assert!(done[0].duration.as_nanos() > 0);
    assert_eq!(store(&app).len(), 2, "remote results are in the store");
    assert_eq!(store(&app).entry(&2).map(|e| e.version), Some(1));
}

#[test]
fn cache_and_network_answers_twice_and_cache_only_once() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut app = remote_app(&remote);
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::all(), FetchPolicy::CacheAndNetwork))
        .expect("runs");
    let done = wait_read(&mut app, t);
    let sources: Vec<_> = done.iter().map(|r| r.source.clone()).collect();
    assert_eq!(sources, [ReadSource::Local, ReadSource::Remote]);
    assert!(done[0].ids.is_empty() && done[1].ids == [1]);
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::all(), FetchPolicy::CacheOnly))
        .expect("runs");
    app.update();
    app.update();
    let done: Vec<_> = finished(&mut app).into_iter().filter(|r| r.ticket == t).collect();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].source.clone(), done[0].ids.clone()), (ReadSource::Local, vec![1]));
}

#[test]
fn merge_policies() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[Player { gold: 5, ..player(1, "ann", 3) }]);
    let mut app = remote_app(&remote);
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::all(), FetchPolicy::NetworkOnly))
        .expect("runs");
    wait_read(&mut app, t);
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.read(Query::all(), FetchPolicy::NetworkOnly, MergePolicy::UpsertOnly, false)
        })
        .expect("runs");
    let before = atoma::runtime::StoreMetrics::clone(&app.world().resource::<AtomaMetrics>().store("players"));
    wait_read(&mut app, t);
    let after = app.world().resource::<AtomaMetrics>().store("players");
    assert_eq!(after.commits, before.commits, "upsert-only: same version, nothing taken, no commit");
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.read(Query::all(), FetchPolicy::NetworkOnly, MergePolicy::PreserveMissing, false)
        })
        .expect("runs");
    wait_read(&mut app, t);
    assert_eq!(store(&app).get(&1).map(|p| p.gold), Some(5));
}

#[test]
fn list_aligns_deletions_and_a_failed_read_falls_back_to_local() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3), player(2, "bob", 4)]);
    let mut app = remote_app(&remote);
    let t = app.world_mut().run_system_cached(|mut r: Reader<Player>| r.list(Query::all())).expect("runs");
    wait_read(&mut app, t);
    assert_eq!(store(&app).len(), 2);
    // Another client deletes bob on the backend.
    let mut other = remote_app(&remote);
    let t = other.world_mut().run_system_cached(|mut r: Reader<Player>| r.list(Query::all())).expect("runs");
    wait_read(&mut other, t);
    other
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.delete(2);
        })
        .expect("runs");
    assert!(settle::<Player>(&mut other, 1)[0].is_ok());
    let t = app.world_mut().run_system_cached(|mut r: Reader<Player>| r.list(Query::all())).expect("runs");
    let done = wait_read(&mut app, t);
    assert_eq!(done.last().map(|r| r.ids.clone()), Some(vec![1]));
    assert!(!store(&app).contains(&2), "list removed the record the backend no longer has");

    // Fallback: the route's executor is down; the local store answers.
    let mut app = app_with_down();
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.with(WriteOptions::default().route("memory")).create(player(7, "local", 1));
        })
        .expect("runs");
    settle::<Player>(&mut app, 1);
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::all(), FetchPolicy::NetworkOnly))
        .expect("runs");
    let done = wait_read(&mut app, t);
    match &done[0].source {
        ReadSource::Fallback(e) => assert_eq!(e.code, "NETWORK"),
        other => panic!("expected a fallback, got {other:?}"),
    }
    assert_eq!(done[0].ids, [7]);
}

fn app_with_down() -> App {
    app(AtomaPlugin::in_memory().route("down", Route::new(Down)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("down"));
    })
}

#[test]
fn the_writeback_transform_sees_remote_data_before_the_store() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut app = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote").writeback(|mut p: Player| {
            p.name = p.name.to_uppercase();
            Ok(p)
        }));
    });
    let t = app
        .world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::all(), FetchPolicy::NetworkOnly))
        .expect("runs");
    wait_read(&mut app, t);
    assert_eq!(store(&app).get(&1).map(|p| p.name.as_str()), Some("ANN"));
}

/// A record whose id is a string (of digits, which the wire's JSON cannot tell from a number).
#[derive(atoma::Record, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[record(store = "codes")]
struct Code {
    id: String,
    label: String,
}

#[test]
fn string_ids_of_digits_and_numeric_ids_both_decode_from_the_wire() {
    use atoma::io::Executor;
    use atoma::protocol::{ItemMeta, WireWriteEntry, WriteItem, WriteRequest};
    let remote = Remote::default();
    let create = |id: &str| WireWriteEntry {
        entry_id: id.into(),
        action: atoma::core::WriteAction::Create,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: None,
            value: Some(serde_json::json!({"id": id, "label": format!("code {id}")})),
            ops: None,
            meta: ItemMeta { idempotency_key: format!("k{id}"), client_time_ms: 1 },
        },
        options: None,
    };
    let req = WriteRequest { resource: "codes".into(), entries: vec![create("042"), create("7"), create("x1")] };
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let seeded = rt.block_on(remote.0.write(req)).expect("seeded");
    assert!(seeded.results.iter().all(|r| r.ok), "{seeded:?}");
    seed_remote(&remote.0, &[player(5, "eve", 4)]);
    let mut app = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Code>(StoreConfig::default().route("remote"));
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    });
    app.world_mut()
        .run_system_cached(|mut r: Reader<Code>| r.fetch(Query::default(), FetchPolicy::NetworkOnly))
        .expect("runs");
    app.world_mut()
        .run_system_cached(|mut r: Reader<Player>| r.fetch(Query::default(), FetchPolicy::NetworkOnly))
        .expect("runs");
    assert!(run_until(&mut app, |app| {
        app.world().resource::<Store<Code>>().len() == 3 && app.world().resource::<Store<Player>>().len() == 1
    }));
    let store = app.world().resource::<Store<Code>>();
    for id in ["042", "7", "x1"] {
        assert_eq!(store.get(&id.to_owned()).map(|c| c.label.clone()), Some(format!("code {id}")), "{id}");
    }
    assert_eq!(app.world().resource::<Store<Player>>().get(&5).map(|p| p.name.clone()), Some("eve".into()));
}
