//! changes.pull: cursors, limits, resource filters, values.

use atoma_server::{Limits, ServerConfig};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn pull_with_cursors_and_limits() {
    let limits = Limits { max_pull_limit: 3, ..Limits::default() };
    let s = start(ServerConfig::new().with_limits(limits)).await;

    let r = s.pull(json!({ "cursor": "0" })).await;
    assert_eq!(r["data"], json!({ "nextCursor": "0", "changes": [] }));

    s.write1("players", create("p1", json!({ "n": 1 }))).await; // 1
    s.write1("players", update("p1", 1, json!({ "n": 2 }))).await; // 2
    s.write1("items", create("i1", json!({ "kind": "sword" }))).await; // 3
    s.write1("players", create("p2", json!({}))).await; // 4
    s.write1("players", delete("p1", 2)).await; // 5

    let r = s.pull(json!({ "cursor": "0", "limit": 2 })).await;
    assert_eq!(r["ok"], true, "{r}");
    let changes = r["data"]["changes"].as_array().expect("a list");
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["resource"], "players");
    assert_eq!(changes[0]["entityId"], "p1");
    assert_eq!(changes[0]["kind"], "upsert");
    assert_eq!(changes[0]["version"], 1);
    assert_eq!(changes[0]["value"], json!({ "id": "p1", "n": 1, "version": 1 }));
    assert!(changes[0]["changedAtMs"].as_i64().is_some_and(|t| t > 1_700_000_000_000));
    assert_eq!(changes[1]["version"], 2);
    assert_eq!(r["data"]["nextCursor"], "2");

    let r = s.pull(json!({ "cursor": "2", "limit": 2 })).await;
    let changes = r["data"]["changes"].as_array().expect("a list");
    assert_eq!(changes[0]["entityId"], "i1");
    assert_eq!(changes[1]["entityId"], "p2");
    assert_eq!(r["data"]["nextCursor"], "4");

    let r = s.pull(json!({ "cursor": "4", "limit": 2 })).await;
    let changes = r["data"]["changes"].as_array().expect("a list");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["kind"], "delete");
    assert_eq!(changes[0]["entityId"], "p1");
    assert_eq!(changes[0]["version"], 3, "a delete's version follows the deleted one");
    assert!(changes[0].get("value").is_none(), "{}", changes[0]);
    assert_eq!(r["data"]["nextCursor"], "5");

    let r = s.pull(json!({ "cursor": "5" })).await;
    assert_eq!(r["data"], json!({ "nextCursor": "5", "changes": [] }));

    // The limit is clamped to max_pull_limit (3).
    let (status, body) =
        s.ops(json!([{ "opId": "p", "kind": "changes.pull", "pull": { "cursor": "0", "limit": 1000 } }])).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["results"][0]["data"]["changes"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["data"]["results"][0]["data"]["nextCursor"], "3");
    assert_eq!(body["meta"]["warnings"][0]["code"], "LIMIT_CLAMPED");

    // Only some resources: the cursor still advances past the others.
    let r = s.pull(json!({ "cursor": "0", "resources": ["items"] })).await;
    let changes = r["data"]["changes"].as_array().expect("a list");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["entityId"], "i1");
    assert_eq!(r["data"]["nextCursor"], "5");
    let r = s.pull(json!({ "cursor": "0", "limit": 1, "resources": ["items"] })).await;
    assert_eq!(r["data"]["nextCursor"], "3", "stops at the last change returned");

    // Bad cursors and payloads fail the op with INVALID_REQUEST.
    for pull in [
        json!({ "cursor": "abc" }),
        json!({ "cursor": "" }),
        json!({ "cursor": "-1" }),
        json!({ "cursor": "99999999999999999999999" }),
        json!({ "cursor": 5 }),
        json!({ "cursor": "0", "limit": -1 }),
        json!({ "cursor": "0", "resources": ["bad name"] }),
        json!({ "cursor": "0", "extra": true }),
    ] {
        let r = s.pull(pull.clone()).await;
        assert_eq!(r["ok"], false, "{pull}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{pull}: {r}");
    }
}
