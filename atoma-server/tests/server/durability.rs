//! Restarting on the same data folder keeps records, versions, the change log and
//! idempotency keys.

use atoma::core::IndexSpec;
use atoma_server::{ResourceConfig, Server, ServerConfig, ServerError, StorageError};
use serde_json::json;

use crate::*;

fn config() -> ServerConfig {
    ServerConfig::new().with_resource(ResourceConfig::new("players").with_index(IndexSpec::ordered("level")))
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let s = start(config()).await;
    let first = s.write1("players", with_key(create("p1", json!({ "level": 3 })), "key-create")).await; // 1
    s.write1("players", update("p1", 1, json!({ "level": 4 }))).await; // 2
    s.write1("players", create("p2", json!({ "level": 9 }))).await; // 3
    s.write1("players", patch("p2", None, json!([{ "op": "inc", "path": "level", "value": 1 }]))).await; // 4
    s.write1("items", create("i1", json!({ "name": "sword" }))).await; // 5
    s.write1("items", delete("i1", 1)).await; // 6
    let before_records = s.records("players", json!({ "sort": [{ "field": "level" }] })).await;
    let (before_changes, before_cursor) = s.pull_all("0").await;
    assert_eq!(before_cursor, "6");

    // A second server on the same folder is refused while the first runs.
    let clash =
        Server::start(config().with_bind("127.0.0.1:0".parse().expect("addr")).with_data_dir(s.dir.path())).await;
    assert!(matches!(clash, Err(ServerError::Storage(StorageError::Locked { .. }))), "{clash:?}");

    let dir = s.stop().await;
    let s = start_in(config(), dir).await;

    assert_eq!(s.records("players", json!({ "sort": [{ "field": "level" }] })).await, before_records);
    assert_eq!(
        s.ids("players", json!({ "filter": { "op": "gte", "field": "level", "value": 5 } })).await,
        ["p2"],
        "indexes are rebuilt"
    );
    let (changes, cursor) = s.pull_all("0").await;
    assert_eq!(changes, before_changes);
    assert_eq!(cursor, "6");
    assert!(s.records("items", json!({})).await.is_empty());

    // The idempotency key replays its first result and writes nothing.
    let mut again = with_key(create("p1", json!({ "level": 100 })), "key-create");
    again["entryId"] = first["entryId"].clone();
    let r = s.write1("players", again).await;
    assert_eq!(r, first);
    assert_eq!(s.pull_all("6").await, (vec![], "6".to_owned()));

    // Versions and cursors continue where they were.
    let r = s.write1("players", update("p1", 2, json!({ "level": 5 }))).await;
    assert_eq!(r["version"], 3);
    let (changes, cursor) = s.pull_all("6").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(cursor, "7");
    let dir = s.stop().await;

    // And once more, after the restart's own writes.
    let s = start_in(config(), dir).await;
    assert_eq!(
        s.records("players", json!({ "filter": { "op": "eq", "field": "id", "value": "p1" } })).await[0]["version"],
        3
    );
    assert_eq!(s.pull_all("0").await.1, "7");
}
