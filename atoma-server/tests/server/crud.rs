//! Writes: CRUD and versions, compare-and-set, upserts, patches, idempotency, concurrency.

use atoma_server::ServerConfig;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn crud_and_versions() {
    let s = start(ServerConfig::new()).await;
    let r = s.write1("players", create("p1", json!({ "name": "Ann", "score": 1, "guild": "red" }))).await;
    assert_eq!(r["entityId"], "p1");
    assert_eq!(r["version"], 1);
    assert!(r.get("data").is_none(), "no data without returning: {r}");

    let recs = s.records("players", json!({})).await;
    assert_eq!(recs, [json!({ "id": "p1", "name": "Ann", "score": 1, "guild": "red", "version": 1 })]);

    // Replace.
    let r = s.write1("players", update("p1", 1, json!({ "name": "Bea", "score": 2 }))).await;
    assert_eq!(r["version"], 2);
    assert_eq!(s.records("players", json!({})).await, [json!({ "id": "p1", "name": "Bea", "score": 2, "version": 2 })]);

    // Merge, returning.
    let mut e = update("p1", 2, json!({ "score": 3 }));
    e["options"] = json!({ "merge": true, "returning": true });
    let r = s.write1("players", e).await;
    assert_eq!(r["version"], 3);
    assert_eq!(r["data"], json!({ "id": "p1", "name": "Bea", "score": 3, "version": 3 }));

    // Missing records.
    let r = s.write1("players", update("nope", 1, json!({}))).await;
    assert_eq!((r["ok"].clone(), r["error"]["code"].clone()), (json!(false), json!("NOT_FOUND")));
    let r = s.write1("players", delete("nope", 1)).await;
    assert_eq!(r["error"]["code"], "NOT_FOUND");

    // Delete.
    let r = s.write1("players", delete("p1", 3)).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["entityId"], "p1");
    assert!(r.get("version").is_none(), "{r}");
    assert!(s.records("players", json!({})).await.is_empty());

    // A create after the delete starts again at version 1.
    let r = s.write1("players", create("p1", json!({ "name": "Cy" }))).await;
    assert_eq!(r["version"], 1);

    // Server-assigned ids.
    let mut e = json!({ "entryId": "x", "action": "create", "item": { "value": { "name": "Dee" }, "meta": meta() },
                        "options": { "returning": true } });
    let r = s.write1("players", e.clone()).await;
    let id = r["entityId"].as_str().expect("an assigned id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(r["data"], json!({ "id": id, "name": "Dee", "version": 1 }));
    e["item"]["meta"] = meta();
    let r2 = s.write1("players", e).await;
    assert_ne!(r2["entityId"], r["entityId"], "fresh ids are distinct");

    // value.id must equal entityId.
    let r = s.write1("players", create("p9", json!({ "id": "other" }))).await;
    assert_eq!(r["error"]["code"], "INVALID_WRITE");
    // Missing idempotency key or client time: the op's payload is invalid.
    let r = s
        .write("players", json!([{ "entryId": "e", "action": "create", "item": { "entityId": "z", "value": {} } }]))
        .await;
    assert_eq!((r["ok"].clone(), r["error"]["code"].clone()), (json!(false), json!("INVALID_WRITE")), "{r}");
    let r = s
        .write1(
            "players",
            json!({ "entryId": "e", "action": "create",
                    "item": { "entityId": "z", "value": {}, "meta": { "idempotencyKey": "", "clientTimeMs": 1 } } }),
        )
        .await;
    assert_eq!(r["error"]["code"], "INVALID_WRITE");
}

#[tokio::test]
async fn conflict_carries_the_current_value_and_version() {
    let s = start(ServerConfig::new()).await;
    s.write1("players", create("p1", json!({ "score": 1 }))).await;
    s.write1("players", update("p1", 1, json!({ "score": 2 }))).await;

    let r = s.write1("players", update("p1", 1, json!({ "score": 99 }))).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "CONFLICT");
    assert_eq!(r["error"]["kind"], "conflict");
    assert_eq!(r["current"], json!({ "value": { "id": "p1", "score": 2, "version": 2 }, "version": 2 }));

    let r = s.write1("players", delete("p1", 1)).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    assert_eq!(r["current"]["version"], 2);

    // Create of an existing id.
    let r = s.write1("players", create("p1", json!({}))).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    assert_eq!(r["current"]["value"]["score"], 2);

    // Strict upsert (the default): an existing record needs the matching baseVersion.
    let strict = |base: Option<u64>| {
        let mut item = json!({ "entityId": "p1", "value": { "score": 5 }, "meta": meta() });
        if let Some(b) = base {
            item["baseVersion"] = b.into();
        }
        json!({ "entryId": "u", "action": "upsert", "item": item })
    };
    let r = s.write1("players", strict(None)).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    assert_eq!(r["current"]["version"], 2);
    let r = s.write1("players", strict(Some(1))).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    let r = s.write1("players", strict(Some(2))).await;
    assert_eq!((r["ok"].clone(), r["version"].clone()), (json!(true), json!(3)));
    // Nothing was written by the failures.
    assert_eq!(s.records("players", json!({})).await, [json!({ "id": "p1", "score": 5, "version": 3 })]);
}

#[tokio::test]
async fn loose_upsert_is_last_write_wins() {
    let s = start(ServerConfig::new()).await;
    let r = s.write1("players", upsert_loose("p1", json!({ "score": 1 }))).await;
    assert_eq!(r["version"], 1);
    let r = s.write1("players", upsert_loose("p1", json!({ "score": 2 }))).await;
    assert_eq!(r["version"], 2);
    let mut e = upsert_loose("p1", json!({ "name": "Ann" }));
    e["item"]["baseVersion"] = 1.into(); // ignored in loose mode
    e["options"]["merge"] = true.into();
    let r = s.write1("players", e).await;
    assert_eq!(r["version"], 3, "{r}");
    assert_eq!(s.records("players", json!({})).await, [json!({ "id": "p1", "score": 2, "name": "Ann", "version": 3 })]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commutative_patches_never_conflict() {
    let s = start(ServerConfig::new()).await;
    s.write1("players", create("p1", json!({ "gold": 0, "best": 10, "low": 10, "tags": ["a"] }))).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let api = s.api.clone();
        tasks.push(tokio::spawn(async move {
            let ops = json!([{ "op": "inc", "path": "gold", "value": 5 }, { "op": "max", "path": "best", "value": i * 3 },
                             { "op": "min", "path": "low", "value": i }, { "op": "addToSet", "path": "tags", "value": "b" },
                             { "op": "inc", "path": "stats.kills", "value": 1 }]);
            api.write1("players", patch("p1", None, ops)).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("the task");
        assert_eq!(r["ok"], true, "{r}");
    }
    let recs = s.records("players", json!({})).await;
    assert_eq!(
        recs,
        [
            json!({ "id": "p1", "gold": 50, "best": 27, "low": 0, "tags": ["a", "b"], "stats": { "kills": 10 }, "version": 11 })
        ]
    );
    let r =
        s.write1("players", patch("p1", None, json!([{ "op": "removeFromSet", "path": "tags", "value": "a" }]))).await;
    assert_eq!(r["version"], 12);
    // `set` and `unset` are not commutative: they need the version.
    let r = s.write1("players", patch("p1", None, json!([{ "op": "set", "path": "gold", "value": 1 }]))).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    let r = s
        .write1(
            "players",
            patch(
                "p1",
                Some(12),
                json!([{ "op": "set", "path": "gold", "value": 1 }, { "op": "unset", "path": "low" }]),
            ),
        )
        .await;
    assert_eq!(r["version"], 13, "{r}");
    // A stale version fails even for commutative ops.
    let r = s.write1("players", patch("p1", Some(2), json!([{ "op": "inc", "path": "gold", "value": 1 }]))).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    // A bad patch is an invalid write, not a 500.
    let r = s.write1("players", patch("p1", None, json!([{ "op": "inc", "path": "tags", "value": 1 }]))).await;
    assert_eq!(r["error"]["code"], "INVALID_WRITE");
    let r = s.write1("players", patch("p1", Some(13), json!([{ "op": "set", "path": "id", "value": "x" }]))).await;
    assert_eq!(r["error"]["code"], "INVALID_WRITE");
    assert_eq!(
        s.records("players", json!({})).await,
        [json!({ "id": "p1", "gold": 1, "best": 27, "tags": ["b"], "stats": { "kills": 10 }, "version": 13 })]
    );
}

#[tokio::test]
async fn idempotent_replay_returns_the_first_result() {
    let s = start(ServerConfig::new()).await;
    let first = s.write1("players", with_key(create("p1", json!({ "score": 1 })), "key-1")).await;
    assert_eq!(first["version"], 1);
    // The same key again, even with another payload: the first result, nothing written.
    let mut again = with_key(upsert_loose("p1", json!({ "score": 2 })), "key-1");
    again["entryId"] = "second".into();
    let r = s.write1("players", again).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["entryId"], "second");
    assert_eq!(r["version"], 1);
    assert_eq!(r["entityId"], "p1");
    assert_eq!(s.records("players", json!({})).await, [json!({ "id": "p1", "score": 1, "version": 1 })]);
    // The same key in another resource is another key.
    let r = s.write1("items", with_key(create("i1", json!({})), "key-1")).await;
    assert_eq!((r["ok"].clone(), r["entityId"].clone()), (json!(true), json!("i1")));
    // Twice in one request.
    let r = s
        .write(
            "players",
            json!([
                with_key(patch("p1", None, json!([{ "op": "inc", "path": "score", "value": 1 }])), "key-2"),
                with_key(patch("p1", None, json!([{ "op": "inc", "path": "score", "value": 1 }])), "key-2")
            ]),
        )
        .await;
    let results = r["data"]["results"].as_array().expect("results");
    assert_eq!(results[0]["version"], 2);
    assert_eq!(results[1]["version"], 2);
    assert_eq!(s.records("players", json!({})).await[0]["score"], 2);
    // A failed entry is not remembered: the same key may then succeed.
    let r = s.write1("players", with_key(update("p1", 1, json!({ "score": 0 })), "key-3")).await;
    assert_eq!(r["error"]["code"], "CONFLICT");
    let r = s.write1("players", with_key(update("p1", 2, json!({ "score": 0 })), "key-3")).await;
    assert_eq!(r["version"], 3);
    let (changes, _) = s.pull_all("0").await;
    assert_eq!(changes.len(), 4, "create p1, create i1, one patch, one update: {changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_have_one_effect() {
    let s = start(ServerConfig::new()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let api = s.api.clone();
        tasks.push(tokio::spawn(async move {
            let mut e = with_key(upsert_loose("hot", json!({ "by": i })), "same-key");
            e["entryId"] = format!("e{i}").into();
            api.write1("players", e).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("the task");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["version"], 1, "{r}");
        assert_eq!(r["entryId"], format!("e{i}"));
    }
    let recs = s.records("players", json!({})).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["version"], 1);
    let (changes, cursor) = s.pull_all("0").await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(cursor, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_has_one_winner() {
    let s = start(ServerConfig::new()).await;
    s.write1("players", create("p1", json!({ "score": 0 }))).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let api = s.api.clone();
        tasks.push(tokio::spawn(async move { api.write1("players", update("p1", 1, json!({ "score": i }))).await }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let r = t.await.expect("the task");
        if r["ok"] == true {
            won.push(r);
        } else {
            assert_eq!(r["error"]["code"], "CONFLICT", "{r}");
            assert_eq!(r["current"]["version"], 2, "{r}");
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0]["version"], 2);
    assert_eq!(s.records("players", json!({})).await[0]["version"], 2);
    let (changes, _) = s.pull_all("0").await;
    assert_eq!(changes.len(), 2);
}

#[tokio::test]
async fn one_request_commits_its_writes_together_and_reads_are_ordered() {
    let s = start(ServerConfig::new()).await;
    let (status, body) = s
        .ops(json!([
            { "opId": "before", "kind": "query", "query": { "resource": "players", "query": {} } },
            { "opId": "w1", "kind": "write", "write": { "resource": "players",
                "entries": [create("p1", json!({ "n": 1 })), update("p1", 1, json!({ "n": 2 }))] } },
            { "opId": "w2", "kind": "write", "write": { "resource": "items", "entries": [create("i1", json!({}))] } },
            { "opId": "after", "kind": "query", "query": { "resource": "players", "query": {} } },
            { "opId": "pull", "kind": "changes.pull", "pull": { "cursor": "0" } }
        ]))
        .await;
    assert_eq!(status, 200);
    let results = body["data"]["results"].as_array().expect("results");
    let ids: Vec<&str> = results.iter().map(|r| r["opId"].as_str().expect("an op id")).collect();
    assert_eq!(ids, ["before", "w1", "w2", "after", "pull"], "results in op order");
    assert_eq!(results[0]["data"]["data"], json!([]));
    assert_eq!(results[1]["data"]["transactionApplied"], true);
    assert_eq!(results[1]["data"]["results"][1]["version"], 2);
    assert_eq!(results[3]["data"]["data"], json!([{ "id": "p1", "n": 2, "version": 2 }]));
    assert_eq!(results[4]["data"]["nextCursor"], "3");
    assert_eq!(results[4]["data"]["changes"].as_array().map(Vec::len), Some(3));
}
