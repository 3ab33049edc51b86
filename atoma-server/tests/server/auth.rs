//! Bearer tokens, per-resource rights, and per-record ownership.

use atoma_server::{ResourceConfig, ServerConfig};
use serde_json::json;

use crate::*;

fn config() -> ServerConfig {
    ServerConfig::new()
        .with_token("t-alice", "alice")
        .with_token("t-bob", "bob")
        .with_token("t-carol", "carol")
        .with_resource(ResourceConfig::new("players").with_read(["*"]).with_write(["alice"]))
        .with_resource(ResourceConfig::new("secret").with_read(["alice"]).with_write(["alice"]))
        .with_resource(ResourceConfig::new("drop").with_read(["alice"]).with_write(["*"]))
        .with_resource(
            ResourceConfig::new("notes")
                .with_read(["alice", "bob"])
                .with_write(["alice", "bob"])
                .with_owner_field("ownerId"),
        )
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let s = start(config()).await;
    let (status, body) = s.ops(json!([])).await;
    assert_eq!(status, 401);
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert_eq!(body["error"]["kind"], "auth");
    assert_eq!(body["meta"]["v"], 1);
    let (status, _) = s.as_token("nope").ops(json!([])).await;
    assert_eq!(status, 401);
    let resp = s
        .client
        .post(s.url("/ops"))
        .header("authorization", "Basic dDpwYXNz")
        .body(r#"{"ops":[]}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    // The scheme is case-insensitive.
    let resp = s
        .client
        .post(s.url("/ops"))
        .header("authorization", "bearer t-alice")
        .body(r#"{"ops":[]}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    // Health needs no token.
    let resp = s.client.get(s.url("/health")).send().await.expect("sent");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn rights_per_resource_are_per_op() {
    let s = start(config()).await;
    let alice = s.as_token("t-alice");
    let bob = s.as_token("t-bob");
    alice.write1("players", create("p1", json!({ "n": 1 }))).await; // 1
    alice.write1("secret", create("s1", json!({ "code": 42 }))).await; // 2

    // Bob reads players but may not write them, nor read secret; unlisted resources are closed.
    let (status, body) = bob
        .ops(json!([
            { "opId": "read", "kind": "query", "query": { "resource": "players", "query": {} } },
            { "opId": "write", "kind": "write", "write": { "resource": "players", "entries": [create("p2", json!({}))] } },
            { "opId": "secret", "kind": "query", "query": { "resource": "secret", "query": {} } },
            { "opId": "unlisted", "kind": "query", "query": { "resource": "other", "query": {} } },
            { "opId": "unlisted-w", "kind": "write", "write": { "resource": "other", "entries": [create("x", json!({}))] } },
            { "opId": "pull-secret", "kind": "changes.pull", "pull": { "cursor": "0", "resources": ["players", "secret"] } },
            { "opId": "pull-all", "kind": "changes.pull", "pull": { "cursor": "0" } }
        ]))
        .await;
    assert_eq!(status, 200, "{body}");
    let r = body["data"]["results"].as_array().expect("results");
    assert_eq!(r[0]["ok"], true);
    assert_eq!(r[0]["data"]["data"][0]["id"], "p1");
    assert_eq!(r[1]["error"]["code"], "ACCESS_DENIED");
    assert_eq!(r[1]["error"]["kind"], "auth");
    assert_eq!(r[2]["error"]["code"], "ACCESS_DENIED");
    assert_eq!(r[3]["error"]["code"], "RESOURCE_NOT_ALLOWED");
    assert_eq!(r[4]["error"]["code"], "RESOURCE_NOT_ALLOWED");
    assert_eq!(r[5]["error"]["code"], "ACCESS_DENIED");
    // A pull of everything skips what bob may not read, and still moves past it.
    assert_eq!(r[6]["data"]["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(r[6]["data"]["changes"][0]["entityId"], "p1");
    assert_eq!(r[6]["data"]["nextCursor"], "2");
    // Nothing was written by bob.
    assert_eq!(alice.ids("players", json!({})).await, ["p1"]);

    // Write without read: the write works, but no value comes back (returning, conflicts).
    let mut e = create("d1", json!({ "v": 1 }));
    e["options"] = json!({ "returning": true });
    let r = bob.write1("drop", e).await;
    assert_eq!((r["ok"].clone(), r["version"].clone()), (json!(true), json!(1)));
    assert!(r.get("data").is_none(), "{r}");
    let r = bob.write1("drop", update("d1", 5, json!({}))).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    assert_eq!(r["current"], json!({ "version": 1 }));
    let r = bob.query("drop", json!({})).await;
    assert_eq!(r["error"]["code"], "ACCESS_DENIED");
}

#[tokio::test]
async fn owners_read_and_write_only_their_records() {
    let s = start(config()).await;
    let alice = s.as_token("t-alice");
    let bob = s.as_token("t-bob");

    // A create fills in the owner; another owner is refused.
    let mut e = create("a1", json!({ "text": "mine" }));
    e["options"] = json!({ "returning": true });
    let r = alice.write1("notes", e).await; // 1
    assert_eq!(r["data"], json!({ "id": "a1", "text": "mine", "ownerId": "alice", "version": 1 }));
    let r = alice.write1("notes", create("a2", json!({ "ownerId": "bob" }))).await;
    assert_eq!(r["error"]["code"], "ACCESS_DENIED");
    let r = alice.write1("notes", create("a2", json!({ "ownerId": "alice" }))).await; // 2
    assert_eq!(r["ok"], true);
    let r = bob.write1("notes", create("b1", json!({ "text": "bob's" }))).await; // 3
    assert_eq!(r["ok"], true);

    // Queries see only the principal's records, whatever the filter says.
    assert_eq!(bob.ids("notes", json!({})).await, ["b1"]);
    assert_eq!(
        bob.ids("notes", json!({ "filter": { "op": "eq", "field": "ownerId", "value": "alice" } })).await,
        Vec::<String>::new()
    );
    assert_eq!(alice.ids("notes", json!({})).await, ["a1", "a2"]);
    let r = bob.query("notes", json!({ "page": { "mode": "offset", "includeTotal": true } })).await;
    assert_eq!(r["data"]["pageInfo"]["total"], 1);

    // Bob cannot touch alice's records, and learns nothing of their values.
    for e in [
        update("a1", 1, json!({ "text": "hacked" })),
        update("a1", 7, json!({ "text": "hacked" })),
        delete("a1", 1),
        patch("a1", None, json!([{ "op": "inc", "path": "n", "value": 1 }])),
        upsert_loose("a1", json!({ "text": "hacked" })),
        create("a1", json!({ "text": "hacked" })),
    ] {
        let r = bob.write1("notes", e.clone()).await;
        assert_eq!(r["error"]["code"], "ACCESS_DENIED", "{e}: {r}");
        assert!(r.get("current").is_none(), "{r}");
    }
    assert_eq!(
        alice.records("notes", json!({})).await[0],
        json!({ "id": "a1", "text": "mine", "ownerId": "alice", "version": 1 })
    );

    // Alice cannot give a record away; a replacement keeps her as owner.
    let r = alice.write1("notes", update("a1", 1, json!({ "text": "x", "ownerId": "bob" }))).await;
    assert_eq!(r["error"]["code"], "ACCESS_DENIED");
    let r =
        alice.write1("notes", patch("a1", Some(1), json!([{ "op": "set", "path": "ownerId", "value": "bob" }]))).await;
    assert_eq!(r["error"]["code"], "ACCESS_DENIED");
    let r = alice.write1("notes", patch("a1", Some(1), json!([{ "op": "unset", "path": "ownerId" }]))).await; // 4
    assert_eq!(r["ok"], true, "{r}");
    let r = alice.write1("notes", update("a1", 2, json!({ "text": "replaced" }))).await; // 5
    assert_eq!(r["version"], 3);
    assert_eq!(
        alice.records("notes", json!({ "filter": { "op": "eq", "field": "id", "value": "a1" } })).await[0],
        json!({ "id": "a1", "text": "replaced", "ownerId": "alice", "version": 3 })
    );
    let r = alice.write1("notes", delete("a2", 1)).await; // 6
    assert_eq!(r["ok"], true);

    // Pulls never leak another owner's changes, but the cursor moves past them.
    let r = bob.pull(json!({ "cursor": "0" })).await;
    let changes = r["data"]["changes"].as_array().expect("a list");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["entityId"], "b1");
    assert_eq!(r["data"]["nextCursor"], "6");
    let r = bob.pull(json!({ "cursor": "3", "resources": ["notes"] })).await;
    assert_eq!(r["data"], json!({ "nextCursor": "6", "changes": [] }));
    let (changes, cursor) = alice.pull_all("0").await;
    assert_eq!(changes.len(), 5, "alice sees her five changes: {changes:?}");
    assert_eq!(cursor, "6");
    assert!(changes.iter().all(|c| c["entityId"] != "b1"));
    // Carol may not read notes at all.
    let r = s.as_token("t-carol").pull(json!({ "cursor": "0", "resources": ["notes"] })).await;
    assert_eq!(r["error"]["code"], "ACCESS_DENIED");
}

#[tokio::test]
async fn without_tokens_everyone_is_anonymous() {
    let s = start(ServerConfig::new().with_resource(ResourceConfig::new("mine").with_owner_field("owner"))).await;
    let mut e = create("r1", json!({}));
    e["options"] = json!({ "returning": true });
    let r = s.write1("mine", e).await;
    assert_eq!(r["data"]["owner"], "anonymous");
    // Any token is ignored.
    assert_eq!(s.as_token("whatever").ids("anything", json!({})).await, Vec::<String>::new());
}
