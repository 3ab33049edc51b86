//! Entity mirroring: records as entities carrying `Mirror<T>`; game changes to components are
//! persisted, store changes (remote ones included) reach the components, without echo.

mod common;

use atoma::io::MemoryExecutor;
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

/// Every mirrored entity's record, by id.
fn mirrored(app: &mut App) -> Vec<(u32, Player, u64)> {
    let mut q = app.world_mut().query::<(&Mirror<Player>, &MirrorOf<Player>)>();
    let mut v: Vec<_> = q.iter(app.world()).map(|(m, of)| (*of.id(), m.0.clone(), of.version())).collect();
    v.sort_by_key(|(id, _, _)| *id);
    v
}

fn entity_of(app: &App, id: u32) -> Option<Entity> {
    app.world().resource::<MirrorEntities<Player>>().get(&id)
}

fn mirror_of(app: &App, id: u32) -> Option<Player> {
    let e = entity_of(app, id)?;
    app.world().get::<Mirror<Player>>(e).map(|m| m.0.clone())
}

/// Changes the mirrored record `id` the way a game system would.
fn change(app: &mut App, id: u32, f: impl Fn(&mut Player) + Send + Sync + 'static) {
    app.world_mut()
        .run_system_once(move |mut q: Query<(&mut Mirror<Player>, &MirrorOf<Player>)>| {
            for (mut m, of) in &mut q {
                if *of.id() == id {
                    f(&mut m);
                }
            }
        })
        .expect("runs");
}

/// Writes through a `Writer`, as a game system would.
fn write(app: &mut App, f: impl FnOnce(&mut Writer<Player>) + Send + Sync + 'static) {
    let mut f = Some(f);
    app.world_mut()
        .run_system_once(move |mut w: Writer<Player>| {
            if let Some(f) = f.take() {
                f(&mut w);
            }
        })
        .expect("runs");
}

/// Runs idle frames; returns (commits, intents) before and after.
fn idle(app: &mut App, frames: usize) -> ((u64, u64), (u64, u64)) {
    let m = metrics(app);
    let before = (m.commits, m.intents);
    for _ in 0..frames {
        app.update();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let m = metrics(app);
    (before, (m.commits, m.intents))
}

fn mirror_app() -> App {
    app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default().mirror());
    })
}

#[test]
fn entities_appear_for_records_present_at_start_and_for_new_ones() {
    let disk = MemoryExecutor::new();
    seed_remote(&disk, &[player(1, "ann", 3), player(2, "bob", 5)]);
    let mut app = app(AtomaPlugin::in_memory().route("disk", Route::new(disk)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("disk").mirror());
    });
    // Before the first frame: the loaded records are entities already.
    let m = mirrored(&mut app);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].1.name.as_str(), m[0].2), ("ann", 1));
    assert_eq!((m[1].1.name.as_str(), m[1].2), ("bob", 1));
    assert_eq!(app.world().resource::<MirrorEntities<Player>>().len(), 2);
    write(&mut app, |w| {
        w.create(player(3, "cid", 1));
    });
    app.update();
    assert_eq!(mirror_of(&app, 3), Some(player(3, "cid", 1)), "a new record's entity appears in the same frame");
    assert!(settle::<Player>(&mut app, 1)[0].is_ok());
    app.update();
    let m = mirrored(&mut app);
    assert_eq!(m.len(), 3);
    assert_eq!(m[2].2, 1, "the version written back reaches MirrorOf");
    let (before, after) = idle(&mut app, 5);
    assert_eq!(before, after, "nothing happens on idle frames");
}

#[test]
fn a_game_change_to_a_component_persists_in_one_commit() {
    let disk = MemoryExecutor::new();
    let mut app = app(AtomaPlugin::in_memory().route("disk", Route::new(disk.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("disk").mirror());
    });
    write(&mut app, |w| {
        w.create(player(1, "ann", 3));
        w.create(player(2, "bob", 5));
    });
    assert_eq!(settle::<Player>(&mut app, 2).iter().filter(|s| s.is_ok()).count(), 2);
    app.update();
    let (c0, i0) = (metrics(&app).commits, metrics(&app).intents);
    let bob = entity_of(&app, 2);

    change(&mut app, 1, |p| {
        p.level = 50;
        p.gold += 7;
    });
    app.update();
    let m = metrics(&app);
    assert_eq!((m.commits, m.intents), (c0 + 1, i0 + 1), "one intent, one commit");
    assert_eq!(store(&app).get(&1).map(|p| (p.level, p.gold)), Some((50, 7)));
    let results = settle::<Player>(&mut app, 1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].id, Some(1));
    assert_eq!(results[0].result.as_ref().ok(), Some(&Some(2)), "{:?}", results[0].result);
    app.update();
    assert_eq!(store(&app).entry(&1).map(|e| e.version), Some(2), "the version is written back");
    let of = app.world().get::<MirrorOf<Player>>(entity_of(&app, 1).expect("mirrored")).map(MirrorOf::version);
    assert_eq!(of, Some(2));
    assert_eq!(entity_of(&app, 2), bob, "other entities are left alone");
    let (before, after) = idle(&mut app, 5);
    assert_eq!(before, after, "no echo of the game's own change");

    // It was persisted: a fresh app loading the same executor sees it.
    let fresh = app_on(disk);
    assert_eq!(fresh.world().resource::<Store<Player>>().get(&1).map(|p| p.level), Some(50));
}

fn app_on(disk: MemoryExecutor) -> App {
    app(AtomaPlugin::in_memory().route("disk", Route::new(disk)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("disk"));
    })
}

#[test]
fn writing_an_equal_value_makes_no_intent() {
    let mut app = mirror_app();
    write(&mut app, |w| {
        w.create(player(1, "ann", 3));
    });
    settle::<Player>(&mut app, 1);
    app.update();
    let (c0, i0) = (metrics(&app).commits, metrics(&app).intents);
    // A mutable access that leaves the value as it was (marks the component changed).
    change(&mut app, 1, |p| p.level = 3);
    let (_, after) = idle(&mut app, 3);
    assert_eq!(after, (c0, i0));
}

#[derive(Resource, Default)]
struct Seen(Vec<(u32, String)>);

/// What a game system watching mirrored players sees change.
type ChangedPlayers<'w, 's> =
    Query<'w, 's, (&'static MirrorOf<Player>, &'static Mirror<Player>), Changed<Mirror<Player>>>;

fn watch(q: ChangedPlayers, mut seen: ResMut<Seen>) {
    for (of, m) in &q {
        seen.0.push((*of.id(), m.name.clone()));
    }
}

#[test]
fn remote_changes_reach_the_components_and_do_not_echo() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3), player(2, "bob", 5)]);
    let route = |r: &Remote| Route::new(r.clone()).with_policy(RoutePolicy::default());
    let mut ours = app(AtomaPlugin::in_memory().route("remote", route(&remote)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote").mirror());
        app.init_resource::<Seen>().add_systems(Update, watch);
    });
    assert!(mirrored(&mut ours).is_empty(), "a remote route loads nothing at start");
    ours.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut ours, |app| app.world().resource::<MirrorEntities<Player>>().len() == 2));
    ours.update();
    let seen = std::mem::take(&mut ours.world_mut().resource_mut::<Seen>().0);
    assert_eq!(seen.len(), 2, "game systems see fetched records as new components: {seen:?}");

    // Another client changes record 1.
    let mut theirs = app(AtomaPlugin::in_memory().route("remote", route(&remote)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    });
    theirs
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "theirs".into());
        })
        .expect("runs");
    assert!(settle::<Player>(&mut theirs, 1)[0].is_ok());

    let (c0, i0) = (metrics(&ours).commits, metrics(&ours).intents);
    ours.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut ours, |app| mirror_of(app, 1).is_some_and(|p| p.name == "theirs")));
    ours.update();
    let seen = std::mem::take(&mut ours.world_mut().resource_mut::<Seen>().0);
    assert_eq!(seen, vec![(1, "theirs".to_owned())], "the remote change is a component change for game systems");
    let of = ours.world().get::<MirrorOf<Player>>(entity_of(&ours, 1).expect("mirrored")).map(MirrorOf::version);
    assert_eq!(of, Some(2));
    let (_, after) = idle(&mut ours, 5);
    assert_eq!(after, (c0 + 1, i0), "one commit for the fetch; no intent: atoma's refresh is not echoed");
    assert!(ours.world().resource::<Seen>().0.is_empty());
}

#[test]
fn an_executor_conflict_reaches_the_component() {
    let remote = Remote::default();
    seed_remote(&remote.0, &[player(1, "ann", 3)]);
    let mut ours = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote").mirror());
    });
    ours.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut ours, |app| mirror_of(app, 1).is_some()));
    let mut theirs = app(AtomaPlugin::in_memory().route("remote", Route::new(remote)), |app| {
        app.add_store::<Player>(StoreConfig::default().route("remote"));
    });
    theirs
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "theirs".into());
        })
        .expect("runs");
    assert!(settle::<Player>(&mut theirs, 1)[0].is_ok());
    // Our game changes the component, based on version 1: the executor says conflict.
    change(&mut ours, 1, |p| p.name = "mine".into());
    let results = settle::<Player>(&mut ours, 1);
    assert!(matches!(results[0].result, Err(WriteFailure::Remote { .. })), "{:?}", results[0].result);
    ours.update();
    assert_eq!(mirror_of(&ours, 1).map(|p| p.name), Some("theirs".into()), "the server's copy is on the entity");
    let m = metrics(&ours);
    let (_, after) = idle(&mut ours, 5);
    assert_eq!(after, (m.commits, m.intents), "and it is not written back again");
}

#[test]
fn deletes_despawn_and_despawns_do_not_delete() {
    let mut app = mirror_app();
    write(&mut app, |w| {
        w.create_many([player(1, "ann", 3), player(2, "bob", 5), player(3, "cid", 1)]);
    });
    settle::<Player>(&mut app, 3);
    let one = entity_of(&app, 1).expect("mirrored");
    write(&mut app, |w| {
        w.delete(1);
    });
    app.update();
    assert!(app.world().get_entity(one).is_err(), "the deleted record's entity is despawned");
    assert_eq!(entity_of(&app, 1), None);
    assert_eq!(mirrored(&mut app).iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), vec![2, 3]);
    assert!(settle::<Player>(&mut app, 1)[0].is_ok());

    // The game despawns an entity: the record stays, and atoma brings the entity back.
    let two = entity_of(&app, 2).expect("mirrored");
    let intents = metrics(&app).intents;
    app.world_mut().despawn(two);
    app.update();
    assert!(store(&app).contains(&2), "a despawn does not delete");
    let again = entity_of(&app, 2).expect("mirrored again");
    assert_ne!(again, two);
    assert_eq!(mirror_of(&app, 2), Some(player(2, "bob", 5)));
    // Removing the component only: it is put back on the same entity.
    let three = entity_of(&app, 3).expect("mirrored");
    app.world_mut().entity_mut(three).remove::<Mirror<Player>>();
    app.update();
    assert_eq!(entity_of(&app, 3), Some(three));
    assert_eq!(mirror_of(&app, 3), Some(player(3, "cid", 1)));
    app.world_mut().entity_mut(three).remove::<MirrorOf<Player>>();
    app.update();
    let of = app.world().get::<MirrorOf<Player>>(three).map(|of| (*of.id(), of.version()));
    assert_eq!(of, Some((3, 1)), "so is MirrorOf");
    let (_, after) = idle(&mut app, 3);
    assert_eq!(after.1, intents, "no writes");
}

#[test]
fn changing_the_id_in_a_component_settles_as_an_error_and_refreshes_the_entity() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(
            StoreConfig::default()
                .mirror()
                .validate(|p: &Player| if p.level < 0 { Err("negative level".into()) } else { Ok(()) }),
        );
    });
    write(&mut app, |w| {
        w.create_many([player(1, "ann", 3), player(2, "bob", 5)]);
    });
    settle::<Player>(&mut app, 2);
    app.update();
    let before: Vec<Player> = {
        let mut v: Vec<Player> = store(&app).iter().cloned().collect();
        v.sort_by_key(|p| p.id);
        v
    };
    change(&mut app, 1, |p| p.id = 2);
    let results = settle::<Player>(&mut app, 1);
    assert!(
        matches!(&results[0].result, Err(WriteFailure::Rejected(atoma::core::WriteError::Invalid(m))) if m.contains("id")),
        "{:?}",
        results[0].result
    );
    app.update();
    let mut after: Vec<Player> = store(&app).iter().cloned().collect();
    after.sort_by_key(|p| p.id);
    assert_eq!(after, before, "nothing corrupted");
    assert_eq!(mirror_of(&app, 1), Some(player(1, "ann", 3)), "the entity shows the store again");
    assert_eq!(mirror_of(&app, 2), Some(player(2, "bob", 5)));

    // A failed validation: the same.
    change(&mut app, 2, |p| p.level = -1);
    let results = settle::<Player>(&mut app, 1);
    assert!(matches!(results[0].result, Err(WriteFailure::Rejected(_))), "{:?}", results[0].result);
    app.update();
    assert_eq!(mirror_of(&app, 2), Some(player(2, "bob", 5)));
    let m = metrics(&app);
    let (_, after) = idle(&mut app, 5);
    assert_eq!(after, (m.commits, m.intents), "the refresh is not echoed");
}

#[test]
fn a_rolled_back_component_change_shows_the_store_again() {
    let mut app = app(AtomaPlugin::in_memory().route("down", Route::new(Down)), |app| {
        app.add_store::<Player>(StoreConfig::default().mirror());
    });
    write(&mut app, |w| {
        w.create(player(1, "ann", 3));
    });
    settle::<Player>(&mut app, 1);
    // Route the store's writes to a backend that is down, from now on.
    app.world_mut().resource_mut::<atoma::runtime::Routes>().set_default("down");
    change(&mut app, 1, |p| p.level = 9);
    app.update();
    assert_eq!(store(&app).get(&1).map(|p| p.level), Some(9), "optimistic");
    let results = settle::<Player>(&mut app, 1);
    assert!(matches!(results[0].result, Err(WriteFailure::Unavailable { .. })), "{:?}", results[0].result);
    app.update();
    assert_eq!(store(&app).get(&1).map(|p| p.level), Some(3), "rolled back");
    assert_eq!(mirror_of(&app, 1).map(|p| p.level), Some(3), "and so is the entity");
    let m = metrics(&app);
    let (_, after) = idle(&mut app, 5);
    assert_eq!(after, (m.commits, m.intents));
}
