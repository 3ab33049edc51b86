//! `LiveQuery<T>`: results refresh in frames where the store changed, and only then.

mod common;

use atoma::prelude::*;
use bevy_ecs::prelude::*;

type Query = atoma::Query;
type EcsQuery<'w, 's, D, F> = bevy_ecs::system::Query<'w, 's, D, F>;

#[derive(Resource, Default)]
struct ChangedFrames(usize);
use common::*;

#[test]
fn live_queries_refresh_only_when_their_store_changed() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default().index(IndexSpec::ordered("level")));
        app.init_resource::<ChangedFrames>();
        app.add_systems(bevy_app::Last, |q: EcsQuery<(), Changed<LiveQuery<Player>>>, mut n: ResMut<ChangedFrames>| {
            n.0 += q.iter().count();
        });
    });
    let e = app
        .world_mut()
        .spawn(LiveQuery::<Player>::new(Query::filter(field("level").gte(10)).sort_desc("level").limit(3)))
        .id();
    app.update();
    let lq = app.world().get::<LiveQuery<Player>>(e).expect("component");
    assert!(lq.ids().is_empty());
    let refreshes = lq.refreshes();
    assert_eq!(refreshes, 1, "computed once when added");
    for _ in 0..10 {
        app.update();
    }
    assert_eq!(
        app.world().get::<LiveQuery<Player>>(e).expect("component").refreshes(),
        refreshes,
        "idle frames do not recompute"
    );

    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create_many([
                player(1, "a", 5),
                player(2, "b", 15),
                player(3, "c", 25),
                player(4, "d", 12),
                player(5, "e", 30),
            ]);
        })
        .expect("runs");
    app.update();
    let lq = app.world().get::<LiveQuery<Player>>(e).expect("component");
    assert_eq!(lq.ids(), [5, 3, 2]);
    assert_eq!(lq.refreshes(), refreshes + 1);
    let store = app.world().resource::<Store<Player>>();
    assert_eq!(lq.records(store).map(|p| p.name.as_str()).collect::<Vec<_>>(), ["e", "c", "b"]);

    // A change that does not alter the results recomputes but does not mark the component changed.
    let changed = |app: &bevy_app::App| app.world().resource::<ChangedFrames>().0;
    let base = changed(&app);
    app.update();
    assert_eq!(changed(&app), base);
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.gold = 1);
        })
        .expect("runs");
    app.update();
    assert_eq!(changed(&app), base, "same results: the component is not marked changed");
    app.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.delete(5);
        })
        .expect("runs");
    app.update();
    assert_eq!(changed(&app), base + 1);
    assert_eq!(app.world().get::<LiveQuery<Player>>(e).expect("component").ids(), [3, 2, 4]);
}

#[test]
fn an_invalid_live_query_reports_its_error() {
    let mut app = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(StoreConfig::default());
    });
    let bad: Query =
        serde_json::from_value(serde_json::json!({"filter": {"op": "gt", "field": "level", "value": [1]}}))
            .expect("parses");
    let e = app.world_mut().spawn(LiveQuery::<Player>::new(bad)).id();
    app.update();
    let lq = app.world().get::<LiveQuery<Player>>(e).expect("component");
    assert!(lq.error().is_some_and(|e| e.to_string().contains("needs a number or a string")));
}
