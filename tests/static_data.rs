//! Static game data: stores seeded from JSON files under `assets/`, validated through the
//! store's transforms and indexed like any other store; malformed files say where.

mod common;

use std::path::PathBuf;

use atoma::prelude::*;
use atoma::runtime::{AtomaStatus, SeedError, StoreConfig, Transforms, load_seed};
use serde::{Deserialize, Serialize};

#[derive(FieldValue, Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Weapon,
    Armor,
    Consumable,
}

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "items")]
struct Item {
    id: String,
    name: String,
    kind: Kind,
    price: i64,
    level: i64,
    tags: Vec<String>,
}

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("atoma-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn a_catalog_is_seeded_indexed_and_queryable() {
    let app = common::app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Item>(
            StoreConfig::default()
                .seed(assets().join("items.json"))
                .index(IndexSpec::eq("kind"))
                .index(IndexSpec::ordered("price"))
                .index(IndexSpec::eq("tags")),
        );
    });
    assert!(app.world().resource::<AtomaStatus>().errors.is_empty());
    let items = app.world().resource::<Store<Item>>();
    assert_eq!(items.len(), 9);
    let q = atoma::Query::filter(field("kind").eq("weapon").and(field("price").lte(200))).sort_asc("price");
    let names: Vec<_> = items.query(&q).expect("runs").records().map(|i| i.name.clone()).collect();
    assert_eq!(names, ["Bronze Sword", "Ash Longbow", "Steel Sword"]);
    let ex = items.explain(&atoma::Query::filter(field("tags").eq("starter"))).expect("runs");
    assert_eq!(ex.used.first().map(|u| u.field.as_str()), Some("tags"));
    assert_eq!(items.entry(&"potion-heal".to_string()).map(|e| e.version), Some(0), "seeded, never persisted");
}

#[test]
fn a_malformed_file_names_the_file_line_and_field() {
    let p = temp_file(
        "bad-type.json",
        "[\n  {\"id\": \"a\", \"name\": \"A\", \"kind\": \"weapon\", \"price\": 1, \"level\": 1, \"tags\": []},\n  {\"id\": \"b\", \"name\": \"B\", \"kind\": \"weapon\", \"price\": \"cheap\", \"level\": 1, \"tags\": []}\n]\n",
    );
    let err = load_seed::<Item>(&p, &Transforms::default()).expect_err("price is a string");
    match &err {
        SeedError::Parse { path, line, .. } => {
            assert_eq!(path, &p);
            assert_eq!(*line, 3);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("bad-type.json") && msg.contains("line 3") && msg.contains("invalid type: string \"cheap\""),
        "{msg}"
    );

    let p = temp_file(
        "missing.json",
        "[{\"id\": \"a\", \"name\": \"A\", \"kind\": \"weapon\", \"level\": 1, \"tags\": []}]",
    );
    let msg = load_seed::<Item>(&p, &Transforms::default()).expect_err("no price").to_string();
    assert!(msg.contains("missing field `price`") && msg.contains("line 1"), "{msg}");

    let p = temp_file("syntax.json", "[{\"id\": \"a\",,}]");
    assert!(matches!(load_seed::<Item>(&p, &Transforms::default()), Err(SeedError::Parse { line: 1, .. })));
    let missing = assets().join("nope.json");
    assert!(matches!(load_seed::<Item>(&missing, &Transforms::default()), Err(SeedError::Io { .. })));
}

#[test]
fn seeds_pass_the_store_transforms_and_failures_reach_atoma_status() {
    let p = temp_file(
        "priced.json",
        "[{\"id\": \"a\", \"name\": \"a\", \"kind\": \"armor\", \"price\": 5, \"level\": 1, \"tags\": []}, {\"id\": \"b\", \"name\": \"b\", \"kind\": \"armor\", \"price\": -5, \"level\": 1, \"tags\": []}]",
    );
    let config = || {
        StoreConfig::<Item>::default()
            .inbound(|mut i: Item| {
                i.name = i.name.to_uppercase();
                Ok(i)
            })
            .validate(|i: &Item| if i.price < 0 { Err(format!("price {} is negative", i.price)) } else { Ok(()) })
    };
    let err = load_seed::<Item>(&p, config().transforms()).expect_err("b is invalid");
    assert_eq!(err.to_string(), format!("seed file {}, record 1 (id b): price -5 is negative", p.display()));
    let app = common::app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Item>(config().seed(p.clone()));
    });
    let errors = &app.world().resource::<AtomaStatus>().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("record 1 (id b)"));
    assert!(app.world().resource::<Store<Item>>().is_empty(), "a bad file seeds nothing rather than half");

    let good = temp_file(
        "good.json",
        "[{\"id\": \"a\", \"name\": \"a\", \"kind\": \"armor\", \"price\": 5, \"level\": 1, \"tags\": []}]",
    );
    let app = common::app(AtomaPlugin::in_memory(), |app| {
        app.add_store::<Item>(config().seed(good));
    });
    assert_eq!(app.world().resource::<Store<Item>>().get(&"a".to_string()).map(|i| i.name.as_str()), Some("A"));
}
