//! Undo / redo by action id, through the normal write path; sync changes are not undoable.

mod common;

use atoma::io::MemoryExecutor;
use atoma::prelude::*;
use atoma::runtime::{HistoryError, HistoryStep, Route, RoutePolicy};
use bevy_app::App;
use bevy_ecs::system::RunSystemOnce;
use common::*;

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

fn records(app: &App) -> Vec<Player> {
    let mut v: Vec<Player> = store(app).iter().cloned().collect();
    v.sort_by_key(|p| p.id);
    v
}

fn undoable(app: &App) -> Vec<String> {
    app.world().resource::<atoma::runtime::HistoryLog<Player>>().undoable().map(str::to_owned).collect()
}

fn redoable(app: &App) -> Vec<String> {
    app.world().resource::<atoma::runtime::HistoryLog<Player>>().redoable().map(str::to_owned).collect()
}

/// Writes through a `Writer` (one frame's worth), then runs frames until every write settled.
fn write(app: &mut App, f: impl FnOnce(&mut Writer<Player>) + Send + Sync + 'static) {
    let mut f = Some(f);
    app.world_mut()
        .run_system_once(move |mut w: Writer<Player>| {
            if let Some(f) = f.take() {
                f(&mut w);
            }
        })
        .expect("runs");
    settle_all(app);
}

/// Runs frames until nothing is in flight, draining settled results; returns them.
fn settle_all(app: &mut App) -> Vec<WriteSettled<Player>> {
    let mut out = Vec::new();
    run_until(app, |app| {
        out.extend(settled::<Player>(app));
        app.world().resource::<AtomaMetrics>().store("players").in_flight == 0
    });
    app.update();
    out.extend(settled::<Player>(app));
    out
}

/// Runs `f` with the store's `History` as a game system would; returns what it returned.
fn history<R: Send + 'static>(app: &mut App, f: impl FnOnce(&mut History<Player>) -> R + Send + Sync + 'static) -> R {
    let mut f = Some(f);
    app.world_mut()
        .run_system_once(move |mut h: History<Player>| f.take().map(|f| f(&mut h)))
        .expect("runs")
        .expect("ran once")
}

/// Undo / redo, then the frames that persist it: every one of its writes must settle ok.
fn step(
    app: &mut App,
    f: impl FnOnce(&mut History<Player>) -> Option<HistoryStep> + Send + Sync + 'static,
) -> HistoryStep {
    let step = history(app, f).expect("a step to take");
    let results = settle_all(app);
    for t in &step.tickets {
        let r = results.iter().find(|s| s.ticket == *t).expect("every ticket settles");
        assert!(r.is_ok(), "{:?}", r.result);
    }
    step
}

fn on(disk: &MemoryExecutor) -> App {
    app(AtomaPlugin::in_memory().route("disk", Route::new(disk.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("disk"));
    })
}

#[test]
fn undo_restores_a_frames_writes_exactly_and_redo_reapplies_them() {
    let disk = MemoryExecutor::new();
    let mut app = on(&disk);
    write(&mut app, |w| {
        w.create_many([player(1, "ann", 3), player(2, "bob", 5), player(3, "cid", 1)]);
    });
    let before = records(&app);
    write(&mut app, |w| {
        w.update(1, |p| {
            p.level = 10;
            p.guild = Some("red".into());
        });
        w.delete(2);
        w.create(player(4, "dee", 2));
        w.inc(3, "gold", 5);
    });
    let after = records(&app);
    assert_eq!(undoable(&app).len(), 2, "one group per frame: {:?}", undoable(&app));

    let s = step(&mut app, |h| h.undo());
    assert_eq!(s.tickets.len(), 4, "one write per touched record");
    assert_eq!(records(&app), before, "the deleted record is back, the created one gone, the rest as before");
    assert_eq!(undoable(&app).len(), 1);
    assert_eq!(redoable(&app).len(), 1);
    // Persisted through the route: a fresh app loading the executor sees the same.
    assert_eq!(records(&on(&disk)), before);

    step(&mut app, |h| h.redo());
    assert_eq!(records(&app), after);
    assert_eq!(records(&on(&disk)), after);
    assert_eq!(undoable(&app).len(), 2);
    assert!(redoable(&app).is_empty());

    // Undo twice in one frame: back to the start, and both can be redone in order.
    let (a, b) = history(&mut app, |h| (h.undo(), h.undo()));
    assert!(a.is_some() && b.is_some());
    settle_all(&mut app);
    assert!(records(&app).is_empty());
    assert!(records(&on(&disk)).is_empty());
    step(&mut app, |h| h.redo());
    assert_eq!(records(&app), before);
    step(&mut app, |h| h.redo());
    assert_eq!(records(&app), after);
    assert_eq!(records(&on(&disk)), after);
}

#[test]
fn a_large_frame_undoes_and_redoes_exactly() {
    // Large enough for the commit to run on its helper thread while history records (from
    // 16 changes in debug builds, 2,048 in release ones).
    let disk = MemoryExecutor::new();
    let mut app = on(&disk);
    write(&mut app, |w| {
        w.create_many((0..40).map(|i| player(i, &format!("p{i}"), i64::from(i))));
    });
    let before = records(&app);
    write(&mut app, |w| {
        for i in 0..30 {
            w.update(i, |p| p.level += 100);
        }
        for i in 30..35 {
            w.delete(i);
        }
        w.create_many((40..45).map(|i| player(i, "new", 1)));
    });
    let after = records(&app);
    assert_ne!(before, after);
    assert_eq!(undoable(&app).len(), 2);
    let s = step(&mut app, |h| h.undo());
    assert_eq!(s.tickets.len(), 40, "one write per touched record");
    assert_eq!(records(&app), before);
    assert_eq!(records(&on(&disk)), before);
    step(&mut app, |h| h.redo());
    assert_eq!(records(&app), after);
    assert_eq!(records(&on(&disk)), after);
}

#[test]
fn writes_through_a_route_that_is_not_optimistic_undo_exactly() {
    // One record, and a frame large enough for the commit's helper thread (16 in debug);
    // an executor that answers with its copy, and one that stores what it is sent.
    let confirmed = RoutePolicy { optimistic: false, ..RoutePolicy::default() };
    for (n, policy) in
        [(1u32, confirmed), (40, confirmed), (1, confirmed.stores_as_sent()), (40, confirmed.stores_as_sent())]
    {
        let disk = MemoryExecutor::new();
        let route = Route::new(disk.clone()).with_policy(policy);
        let mut app = app(AtomaPlugin::in_memory().route("disk", route), |app| {
            app.add_store::<Player>(StoreConfig::default().route("disk"));
        });
        write(&mut app, move |w| {
            w.create_many((0..n).map(|i| player(i, &format!("p{i}"), i64::from(i))));
        });
        let before = records(&app);
        assert_eq!(before.len(), n as usize);
        write(&mut app, move |w| {
            for i in 0..n {
                w.update(i, |p| p.level += 100);
            }
        });
        let after = records(&app);
        assert!(after.iter().all(|p| p.level >= 100), "{n}: applied on confirmation");
        step(&mut app, |h| h.undo());
        assert_eq!(records(&app), before, "{n} writes");
        step(&mut app, |h| h.redo());
        assert_eq!(records(&app), after, "{n} writes");
    }
}

#[test]
fn undo_writes_are_not_recorded_and_a_new_action_clears_redo() {
    let mut app = on(&MemoryExecutor::new());
    write(&mut app, |w| {
        w.create(player(1, "ann", 3));
    });
    write(&mut app, |w| {
        w.update(1, |p| p.level = 4);
    });
    step(&mut app, |h| h.undo());
    assert_eq!(undoable(&app).len(), 1, "the undo itself is not an action");
    assert_eq!(redoable(&app).len(), 1);
    write(&mut app, |w| {
        w.update(1, |p| p.level = 7);
    });
    assert!(redoable(&app).is_empty(), "a new action clears redo");
    assert!(history(&mut app, |h| h.redo()).is_none());
    assert!(!history(&mut app, |h| h.can_redo()));
}

#[test]
fn writes_with_an_action_id_group_across_frames_and_undo_by_id() {
    let disk = MemoryExecutor::new();
    let mut app = on(&disk);
    write(&mut app, |w| {
        w.create_many([player(1, "ann", 3), player(2, "bob", 5)]);
    });
    let start = records(&app);
    let buy = || WriteOptions::default().action("buy-sword#1");
    write(&mut app, move |w| {
        w.with(buy()).update(1, |p: &mut Player| p.gold -= 30);
    });
    // An unrelated write (no action id) in between.
    write(&mut app, |w| {
        w.create(player(9, "zed", 1));
    });
    write(&mut app, move |w| {
        w.with(buy()).update(2, |p: &mut Player| p.guild = Some("smiths".into()));
    });
    let u = undoable(&app);
    assert_eq!(u.len(), 3, "{u:?}");
    assert_eq!(u[2], "buy-sword#1", "both frames of the action are one group, now the newest: {u:?}");

    let s = step(&mut app, |h| h.undo_action("buy-sword#1").ok());
    assert_eq!(s.action, "buy-sword#1");
    assert_eq!(s.tickets.len(), 2);
    let mut expected = start.clone();
    expected.push(player(9, "zed", 1));
    assert_eq!(records(&app), expected, "both frames undone; the unrelated record stays");
    assert_eq!(records(&on(&disk)), expected);

    // An action can be undone out of order only if no newer action changed its records.
    write(&mut app, |w| {
        w.with(WriteOptions::default().action("rename")).update(1, |p: &mut Player| p.name = "anna".into());
    });
    write(&mut app, |w| {
        w.update(1, |p| p.level = 99);
    });
    let err = history(&mut app, |h| h.undo_action("rename").err());
    assert!(matches!(err, Some(HistoryError::Overlaps { .. })), "{err:?}");
    assert_eq!(history(&mut app, |h| h.undo_action("nope").err()), Some(HistoryError::UnknownAction("nope".into())));
    // The creation of 9 touched nothing the newer actions touched: it can be undone alone.
    let u = undoable(&app);
    assert_eq!(u.len(), 4, "{u:?}");
    let zed = u[1].clone();
    let s = step(&mut app, move |h| h.undo_action(&zed).ok());
    assert_eq!(s.tickets.len(), 1);
    assert_eq!(
        records(&app).iter().map(|p| (p.id, p.name.as_str(), p.level)).collect::<Vec<_>>(),
        vec![(1, "anna", 99), (2, "bob", 5)]
    );
}

#[test]
fn records_brought_by_sync_are_not_undoable() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3), player(2, "bob", 5)]);
    let mut ours = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    });
    ours.world_mut()
        .run_system_once(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut ours, |app| store(app).len() == 2));
    assert!(undoable(&ours).is_empty(), "fetched records are not an action");
    assert!(history(&mut ours, |h| h.undo()).is_none());

    // Another client changes record 1; our write based on the old version conflicts and the
    // server's copy is written back. Undo must not revert that write-back.
    let mut theirs = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    });
    theirs
        .world_mut()
        .run_system_once(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "theirs".into());
        })
        .expect("runs");
    assert!(settle::<Player>(&mut theirs, 1)[0].is_ok());
    ours.world_mut()
        .run_system_once(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "mine".into());
            w.update(2, |p| p.level = 6);
        })
        .expect("runs");
    let results = settle_all(&mut ours);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert_eq!(store(&ours).get(&1).map(|p| p.name.as_str()), Some("theirs"));
    assert_eq!(undoable(&ours).len(), 1);

    let s = step(&mut ours, |h| h.undo());
    assert_eq!(s.tickets.len(), 1, "only the write that stuck is undone");
    assert_eq!(store(&ours).get(&1).map(|p| p.name.as_str()), Some("theirs"), "the write-back stays");
    assert_eq!(store(&ours).get(&2).map(|p| p.level), Some(5));

    // A pulled change after an action: the changed record is left as sync made it.
    ours.world_mut()
        .run_system_once(|mut w: Writer<Player>| {
            w.update(2, |p| p.level = 7);
        })
        .expect("runs");
    settle_all(&mut ours);
    theirs
        .world_mut()
        .run_system_once(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut theirs, |app| store(app).get(&2).is_some_and(|p| p.level == 7)));
    theirs
        .world_mut()
        .run_system_once(|mut w: Writer<Player>| {
            w.update(2, |p| p.guild = Some("blue".into()));
        })
        .expect("runs");
    assert!(settle::<Player>(&mut theirs, 1)[0].is_ok());
    ours.world_mut()
        .run_system_once(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut ours, |app| store(app).get(&2).is_some_and(|p| p.guild.is_some())));
    let s = history(&mut ours, |h| h.undo()).expect("an action");
    assert!(s.tickets.is_empty(), "the record changed through sync since: left alone");
    settle_all(&mut ours);
    assert_eq!(store(&ours).get(&2).map(|p| (p.level, p.guild.clone())), Some((7, Some("blue".into()))));
}

#[test]
fn a_store_without_history_records_nothing() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default().without_history());
    });
    write(&mut app, |w| {
        w.create(player(1, "ann", 3));
    });
    assert!(undoable(&app).is_empty());
    assert!(history(&mut app, |h| h.undo()).is_none());
}
