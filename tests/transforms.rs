//! Transforms (seed 004 §2): outbound shapes what executors store, inbound shapes what
//! arrives from them, writeback shapes an executor's copy after a write; validation failures
//! are settled errors.

mod common;

use atoma::io::Executor;
use atoma::prelude::*;
use atoma::protocol::QueryRequest;
use atoma::runtime::Route;
use common::*;

#[test]
fn outbound_and_inbound_transforms_bracket_the_executor() {
    let remote = Remote::default();
    let config = || {
        StoreConfig::<Player>::default()
            .route("remote")
            // Leaving: names are stored trimmed and lowercase.
            .outbound(|mut p: Player| {
                p.name = p.name.trim().to_lowercase();
                Ok(p)
            })
            // Arriving: a guild is always set.
            .inbound(|mut p: Player| {
                p.guild.get_or_insert_with(|| "none".into());
                Ok(p)
            })
    };
    let mut a = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(config());
    });
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "  Ann ", 3));
        })
        .expect("runs");
    assert!(settle::<Player>(&mut a, 1)[0].is_ok());
    // The store keeps what the game wrote; the executor has the outbound form.
    assert_eq!(a.world().resource::<Store<Player>>().get(&1).map(|p| p.name.as_str()), Some("  Ann "));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let stored = rt
        .block_on(remote.0.query(QueryRequest { resource: "players".into(), query: atoma::Query::all() }))
        .expect("query");
    assert_eq!(stored.data[0]["name"], "ann");
    assert!(stored.data[0]["guild"].is_null());

    // A second client reading it gets the inbound form.
    let mut b = app(AtomaPlugin::in_memory().route("remote", Route::new(remote.clone())), |app| {
        app.add_store::<Player>(config());
    });
    b.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::all(), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    assert!(run_until(&mut b, |b| b.world().resource::<Store<Player>>().contains(&1)));
    let p = b.world().resource::<Store<Player>>().get(&1).cloned().expect("fetched");
    assert_eq!((p.name.as_str(), p.guild.as_deref()), ("ann", Some("none")));
}

#[test]
fn an_outbound_transform_that_rejects_fails_the_write_and_rolls_it_back() {
    let mut a = app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Player>(
            StoreConfig::default()
                .outbound(|p: Player| if p.name.is_empty() { Err("a player needs a name".into()) } else { Ok(p) }),
        );
    });
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "", 3));
            w.create(player(2, "bob", 3));
        })
        .expect("runs");
    let results = settle::<Player>(&mut a, 2);
    let bad = results.iter().find(|r| r.id == Some(1)).expect("settled");
    assert!(bad.result.as_ref().is_err_and(|e| e.to_string().contains("a player needs a name")));
    a.update();
    let store = a.world().resource::<Store<Player>>();
    assert!(store.contains(&2));
    assert!(!store.contains(&1), "a write that cannot leave is not kept");
}
