//! The `http` route against the real atoma-server on 127.0.0.1, driven through a Bevy `App`:
//! CRUD, queries with every filter op and both page modes, conflicts, idempotent replays,
//! auth and ownership.

mod common;

use atoma::prelude::*;
use atoma::runtime::{HttpRoute, ReadSource};
use bevy_app::App;
use bevy_ecs::message::Messages;
use bevy_ecs::system::RunSystemOnce;
use common::server::TestServer;
use common::*;

fn client(server: &TestServer, token: Option<&str>) -> App {
    let mut route = HttpRoute::new(server.url.clone());
    if let Some(t) = token {
        route = route.token(t);
    }
    app(AtomaPlugin::in_memory().http("server", route).default_route("server"), |app| {
        app.add_store::<Player>(StoreConfig::default().index(IndexSpec::ordered("level")));
    })
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

fn read(app: &mut App, q: atoma::Query) -> ReadFinished<Player> {
    let t = app
        .world_mut()
        .run_system_once(move |mut r: Reader<Player>| r.fetch(q.clone(), FetchPolicy::NetworkOnly))
        .expect("runs");
    let mut got = None;
    assert!(run_until(app, |app| {
        got = app.world_mut().resource_mut::<Messages<ReadFinished<Player>>>().drain().find(|r| r.ticket == t);
        got.is_some()
    }));
    got.expect("finished")
}

#[test]
fn crud_versions_and_queries_through_the_server() {
    let server = TestServer::open();
    let mut a = client(&server, None);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            for i in 0..30u32 {
                w.create(Player {
                    guild: Some(if i % 2 == 0 { "red" } else { "blue" }.into()),
                    ..player(i, &format!("hero {i}"), i64::from(i))
                });
            }
        })
        .expect("runs");
    let results = settle::<Player>(&mut a, 30);
    assert!(results.iter().all(|r| r.result.as_ref().is_ok_and(|v| *v == Some(1))), "{results:?}");
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(3, |p| p.level = 300);
            w.update(3, |p| p.gold = 9); // held behind the first, rebased on its version
            w.inc(4, "gold", 5);
            w.delete(5);
        })
        .expect("runs");
    let results = settle::<Player>(&mut a, 4);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    a.update();
    assert_eq!(store(&a).entry(&3).map(|e| (e.record.level, e.record.gold, e.version)), Some((300, 9, 3)));

    // A second client sees it all through queries.
    let mut b = client(&server, None);
    let r = read(
        &mut b,
        atoma::Query::filter(field("guild").eq("red").and(field("level").gte(10))).sort_desc("level").limit(3),
    );
    assert_eq!(r.source, ReadSource::Remote);
    assert_eq!(r.ids, [28, 26, 24]);
    let r = read(
        &mut b,
        atoma::Query::filter(field("name").contains("ero 1").and(field("gold").gt(0).not())).sort_asc("level"),
    );
    assert_eq!(r.ids, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    let r = read(&mut b, atoma::Query::filter(field("id").is_in(["3", "4", "5"])));
    assert_eq!(r.ids, [3, 4]);
    assert_eq!(store(&b).entry(&4).map(|e| (e.record.gold, e.version)), Some((5, 2)));
    // Cursor pages through the server, forward.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let r = read(&mut b, atoma::Query::all().sort_desc("level").limit(7).after(token.clone()));
        seen.extend(r.ids.clone());
        if r.page_info.has_next != Some(true) {
            break;
        }
        token = r.page_info.cursor.clone();
    }
    assert_eq!(seen.len(), 29);
    let r = read(&mut b, atoma::Query::all().limit(5).offset(10).with_total());
    assert_eq!((r.ids.len(), r.page_info.total), (5, Some(29)));
}

#[test]
fn conflicts_write_back_the_server_copy() {
    let server = TestServer::open();
    let mut a = client(&server, None);
    let mut b = client(&server, None);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "ann", 1));
        })
        .expect("runs");
    assert!(settle::<Player>(&mut a, 1)[0].is_ok());
    read(&mut b, atoma::Query::all());
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "from a".into());
        })
        .expect("runs");
    assert!(settle::<Player>(&mut a, 1)[0].is_ok());
    b.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.update(1, |p| p.name = "from b".into());
        })
        .expect("runs");
    let r = settle::<Player>(&mut b, 1);
    match &r[0].result {
        Err(WriteFailure::Remote { error, current: Some(cur), .. }) => {
            assert_eq!(error.code, "CONFLICT");
            assert_eq!((cur.record.name.as_str(), cur.version), ("from a", 2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    b.update();
    assert_eq!(store(&b).get(&1).map(|p| p.name.as_str()), Some("from a"));
}

#[test]
fn a_replayed_idempotency_key_changes_nothing() {
    let server = TestServer::open();
    let mut a = client(&server, None);
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "ann", 1));
        })
        .expect("runs");
    settle::<Player>(&mut a, 1);
    for _ in 0..3 {
        a.world_mut()
            .run_system_cached(|mut w: Writer<Player>| {
                w.with(WriteOptions::default().idempotency_key("reward-42")).patch(1, vec![PatchOp::inc("gold", 10)]);
            })
            .expect("runs");
        assert!(settle::<Player>(&mut a, 1)[0].is_ok());
    }
    let mut b = client(&server, None);
    read(&mut b, atoma::Query::all());
    assert_eq!(store(&b).entry(&1).map(|e| (e.record.gold, e.version)), Some((10, 2)), "one side effect");
}

#[test]
fn auth_and_ownership() {
    let toml = r#"
[[tokens]]
token = "tok-alice"
principal = "alice"
[[tokens]]
token = "tok-bob"
principal = "bob"
[[resources]]
name = "players"
read = ["*"]
write = ["*"]
owner_field = "guild"
"#;
    let server = TestServer::start(toml, None);
    let mut nobody = client(&server, None);
    nobody
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "x", 1));
        })
        .expect("runs");
    let r = settle::<Player>(&mut nobody, 1);
    assert!(matches!(&r[0].result, Err(WriteFailure::Remote { error, .. }) if error.code == "UNAUTHORIZED"), "{r:?}");
    nobody.update();
    assert!(store(&nobody).is_empty(), "rolled back");

    let mut alice = client(&server, Some("tok-alice"));
    let mut bob = client(&server, Some("tok-bob"));
    alice
        .world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "alice's", 1));
        })
        .expect("runs");
    assert!(settle::<Player>(&mut alice, 1)[0].is_ok());
    alice.update();
    assert_eq!(store(&alice).get(&1).and_then(|p| p.guild.clone()), Some("alice".into()), "the server set the owner");
    let r = read(&mut bob, atoma::Query::all());
    assert!(r.ids.is_empty(), "bob does not see alice's records");
    bob.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(Player { guild: Some("alice".into()), ..player(2, "forged", 1) });
        })
        .expect("runs");
    let r = settle::<Player>(&mut bob, 1);
    assert!(matches!(&r[0].result, Err(WriteFailure::Remote { error, .. }) if error.code == "ACCESS_DENIED"), "{r:?}");
}
