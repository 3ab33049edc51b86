//! Queries through the server: every filter op, sorting, both page modes, limits, errors.

use atoma::core::IndexSpec;
use atoma_server::{Limits, ResourceConfig, ServerConfig};
use serde_json::{Value as Json, json};

use crate::*;

fn dataset() -> Vec<Json> {
    vec![
        json!({ "id": "p1", "name": "Alice", "level": 10, "guild": "red", "score": 100, "tags": ["mage", "healer"],
                "stats": { "hp": 50 }, "bio": "a brave dragon slayer", "nick": null }),
        json!({ "id": "p2", "name": "Bob", "level": 20, "guild": "blue", "score": 80, "tags": ["rogue"],
                "stats": { "hp": 30 }, "bio": "quiet thief of the night", "nick": "bobby" }),
        json!({ "id": "p3", "name": "Carol", "level": 30, "guild": "red", "score": 100, "tags": ["mage"],
                "stats": { "hp": 70 }, "bio": "dragon tamer" }),
        json!({ "id": "p4", "name": "Dave", "level": 5, "guild": "green", "score": 10, "tags": [],
                "stats": { "hp": 10 }, "bio": "farmer", "nick": null }),
        json!({ "id": "p5", "name": "Eve", "level": 15, "guild": "blue", "score": 60, "tags": ["rogue", "mage"],
                "stats": { "hp": 40 }, "bio": "spy", "nick": "evil" }),
        json!({ "id": "p6", "name": "Frank", "level": 25, "guild": null, "score": 90, "tags": ["warrior"],
                "stats": { "hp": 90 }, "bio": "knight of the realm" }),
        json!({ "id": "p7", "name": "Grace", "level": 40, "guild": "red", "score": 100, "tags": ["healer"],
                "stats": { "hp": 20 }, "bio": "dragons everywhere", "nick": "g" }),
        json!({ "id": "p8", "name": "Heidi", "level": 35, "guild": "green", "score": 75, "tags": ["warrior", "mage"],
                "bio": "hidden archer" }),
    ]
}

/// `players` has indexes, `plain` has none: both must answer alike.
async fn seeded() -> TestServer {
    let config = ServerConfig::new().with_resource(
        ResourceConfig::new("players")
            .with_index(IndexSpec::ordered("level"))
            .with_index(IndexSpec::eq("guild"))
            .with_index(IndexSpec::text("bio"))
            .with_index(IndexSpec::substring("name"))
            .with_index(IndexSpec::ordered("score")),
    );
    let s = start(config).await;
    for resource in ["players", "plain"] {
        let entries: Vec<Json> = dataset()
            .into_iter()
            .map(|r| {
                let id = r["id"].as_str().expect("id").to_owned();
                create(&id, r)
            })
            .collect();
        let r = s.write(resource, Json::Array(entries)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    s
}

async fn both(s: &TestServer, query: Json) -> Vec<String> {
    let a = s.ids("players", query.clone()).await;
    let b = s.ids("plain", query.clone()).await;
    assert_eq!(a, b, "indexed and plain differ for {query}");
    a
}

async fn filter(s: &TestServer, f: Json) -> Vec<String> {
    let mut ids = both(s, json!({ "filter": f })).await;
    ids.sort();
    ids
}

#[tokio::test]
async fn every_filter_op() {
    let s = seeded().await;
    let cases = [
        (json!({ "op": "eq", "field": "guild", "value": "red" }), vec!["p1", "p3", "p7"]),
        (json!({ "op": "eq", "field": "tags", "value": "mage" }), vec!["p1", "p3", "p5", "p8"]),
        (json!({ "op": "in", "field": "level", "values": [5, 35, 99] }), vec!["p4", "p8"]),
        (json!({ "op": "in", "field": "guild", "values": ["blue", null] }), vec!["p2", "p5", "p6"]),
        (json!({ "op": "gt", "field": "level", "value": 25 }), vec!["p3", "p7", "p8"]),
        (json!({ "op": "gte", "field": "level", "value": 25 }), vec!["p3", "p6", "p7", "p8"]),
        (json!({ "op": "lt", "field": "level", "value": 10 }), vec!["p4"]),
        (json!({ "op": "lte", "field": "level", "value": 10 }), vec!["p1", "p4"]),
        (json!({ "op": "startsWith", "field": "name", "value": "C" }), vec!["p3"]),
        (json!({ "op": "endsWith", "field": "name", "value": "e" }), vec!["p1", "p4", "p5", "p7"]),
        (json!({ "op": "contains", "field": "name", "value": "a" }), vec!["p3", "p4", "p6", "p7"]),
        (json!({ "op": "isNull", "field": "nick" }), vec!["p1", "p3", "p4", "p6", "p8"]),
        (json!({ "op": "isNull", "field": "guild" }), vec!["p6"]),
        (json!({ "op": "exists", "field": "nick" }), vec!["p2", "p5", "p7"]),
        (json!({ "op": "text", "field": "bio", "query": "dragon", "mode": "match" }), vec!["p1", "p3"]),
        (
            json!({ "op": "text", "field": "bio", "query": "Dragon", "mode": "fuzzy", "distance": 1 }),
            vec!["p1", "p3", "p7"],
        ),
        (json!({ "op": "gte", "field": "stats.hp", "value": 50 }), vec!["p1", "p3", "p6"]),
        (
            json!({ "op": "and", "args": [{ "op": "eq", "field": "guild", "value": "red" },
                                          { "op": "gte", "field": "level", "value": 30 }] }),
            vec!["p3", "p7"],
        ),
        (
            json!({ "op": "or", "args": [{ "op": "eq", "field": "guild", "value": "green" },
                                         { "op": "lt", "field": "level", "value": 10 }] }),
            vec!["p4", "p8"],
        ),
        (
            json!({ "op": "not", "arg": { "op": "eq", "field": "guild", "value": "red" } }),
            vec!["p2", "p4", "p5", "p6", "p8"],
        ),
        (json!({ "op": "and", "args": [] }), vec!["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]),
        (json!({ "op": "or", "args": [] }), vec![]),
        (json!({ "op": "eq", "field": "id", "value": "p5" }), vec!["p5"]),
    ];
    for (f, want) in cases {
        assert_eq!(filter(&s, f.clone()).await, want, "{f}");
    }
}

#[tokio::test]
async fn sorting_and_both_page_modes() {
    let s = seeded().await;
    assert_eq!(
        both(&s, json!({ "sort": [{ "field": "score", "dir": "desc" }] })).await,
        ["p1", "p3", "p7", "p6", "p2", "p8", "p5", "p4"],
        "ties broken by id"
    );
    assert_eq!(
        both(&s, json!({ "sort": [{ "field": "level" }] })).await,
        ["p4", "p1", "p5", "p2", "p6", "p3", "p8", "p7"]
    );

    // Offset pages.
    let r = s
        .query("players", json!({ "sort": [{ "field": "level" }], "page": { "mode": "offset", "limit": 3, "offset": 2, "includeTotal": true } }))
        .await;
    let ids: Vec<&str> =
        r["data"]["data"].as_array().expect("a list").iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["p5", "p2", "p6"]);
    assert_eq!(r["data"]["pageInfo"]["total"], 8);
    assert_eq!(r["data"]["pageInfo"]["hasNext"], true);
    for rec in r["data"]["data"].as_array().expect("a list") {
        assert_eq!(rec["version"], 1, "records carry their version");
    }

    // Cursor pages, forward through everything.
    let sort = json!([{ "field": "score", "dir": "desc" }]);
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut page = json!({ "mode": "cursor", "limit": 3 });
        if let Some(a) = &after {
            page["after"] = a.clone().into();
        }
        let r = s.query("players", json!({ "sort": sort, "page": page })).await;
        assert_eq!(r["ok"], true, "{r}");
        let ids: Vec<String> = r["data"]["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect();
        let info = &r["data"]["pageInfo"];
        pages.push(ids);
        if info["hasNext"] != true {
            break;
        }
        after = Some(info["cursor"].as_str().expect("a cursor").to_owned());
        assert!(pages.len() < 10, "paging ends");
    }
    assert_eq!(pages, [vec!["p1", "p3", "p7"], vec!["p6", "p2", "p8"], vec!["p5", "p4"]]);

    // Backwards from the second page's first record.
    let r = s.query("players", json!({ "sort": sort, "page": { "mode": "cursor", "limit": 3 } })).await;
    let c = r["data"]["pageInfo"]["cursor"].as_str().expect("a cursor").to_owned();
    let r = s.query("players", json!({ "sort": sort, "page": { "mode": "cursor", "limit": 3, "after": c } })).await;
    let start = r["data"]["pageInfo"]["startCursor"].as_str().expect("a start cursor").to_owned();
    let r =
        s.query("players", json!({ "sort": sort, "page": { "mode": "cursor", "limit": 2, "before": start } })).await;
    let ids: Vec<&str> =
        r["data"]["data"].as_array().expect("a list").iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["p3", "p7"]);

    // after and before together, a garbage token: per-op INVALID_QUERY.
    let r = s.query("players", json!({ "page": { "mode": "cursor", "after": c, "before": c } })).await;
    assert_eq!((r["ok"].clone(), r["error"]["code"].clone()), (json!(false), json!("INVALID_QUERY")));
    let r = s.query("players", json!({ "sort": sort, "page": { "mode": "cursor", "after": "garbage!" } })).await;
    assert_eq!(r["error"]["code"], "INVALID_QUERY", "{r}");
}

#[tokio::test]
async fn query_limits_are_defaulted_and_clamped() {
    let limits = Limits { default_query_limit: 3, max_query_limit: 5, ..Limits::default() };
    let s = start(ServerConfig::new().with_limits(limits)).await;
    let entries: Vec<Json> = (0..8).map(|i| create(&format!("r{i}"), json!({ "i": i }))).collect();
    s.write("things", Json::Array(entries)).await;
    assert_eq!(s.records("things", json!({})).await.len(), 3, "the default limit");
    assert_eq!(s.records("things", json!({ "page": { "mode": "offset" } })).await.len(), 3);
    let (status, body) = s
        .ops(json!([{ "opId": "q", "kind": "query",
                      "query": { "resource": "things", "query": { "page": { "mode": "cursor", "limit": 100 } } } }]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["results"][0]["data"]["data"].as_array().map(Vec::len), Some(5), "clamped");
    assert_eq!(body["data"]["results"][0]["data"]["pageInfo"]["hasNext"], true);
    assert_eq!(body["meta"]["warnings"][0]["code"], "LIMIT_CLAMPED", "{body}");
    assert_eq!(s.records("things", json!({ "page": { "mode": "offset", "limit": 4 } })).await.len(), 4);
    // A resource nobody wrote yet is empty, not an error.
    let r = s.query("nothing", json!({})).await;
    assert_eq!(r["data"]["data"], json!([]));
}

#[tokio::test]
async fn bad_queries_fail_their_op_only() {
    let s = seeded().await;
    let (status, body) = s
        .ops(json!([
            { "opId": "bad-value", "kind": "query", "query": { "resource": "players",
                "query": { "filter": { "op": "gt", "field": "level", "value": { "x": 1 } } } } },
            { "opId": "unknown-op", "kind": "query", "query": { "resource": "players",
                "query": { "filter": { "op": "near", "field": "level" } } } },
            { "opId": "bad-field", "kind": "query", "query": { "resource": "players",
                "query": { "filter": { "op": "eq", "field": "a..b", "value": 1 } } } },
            { "opId": "bad-resource", "kind": "query", "query": { "resource": "no spaces", "query": {} } },
            { "opId": "not-a-number", "kind": "query", "query": { "resource": "players", "query": { "page": { "mode": "offset", "limit": -1 } } } },
            { "opId": "distance", "kind": "query", "query": { "resource": "players",
                "query": { "filter": { "op": "text", "field": "bio", "query": "x", "mode": "fuzzy", "distance": 7 } } } },
            { "opId": "good", "kind": "query", "query": { "resource": "players", "query": { "filter": { "op": "eq", "field": "id", "value": "p1" } } } }
        ]))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["data"]["results"].as_array().expect("results");
    for r in &results[..6] {
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "INVALID_QUERY", "{r}");
        assert_eq!(r["error"]["kind"], "validation", "{r}");
    }
    assert_eq!(results[6]["ok"], true);
    assert_eq!(results[6]["data"]["data"][0]["id"], "p1");

    // Deep but legal nesting is evaluated, not a crash.
    let mut f = json!({ "op": "eq", "field": "guild", "value": "red" });
    for _ in 0..100 {
        f = json!({ "op": "not", "arg": f });
    }
    assert_eq!(filter(&s, f).await, ["p1", "p3", "p7"]);
}

#[tokio::test]
async fn odd_but_valid_queries_never_fail_the_server() {
    let s = seeded().await;
    let queries = [
        json!({ "page": { "mode": "offset", "limit": 0 } }),
        json!({ "page": { "mode": "offset", "limit": 4_294_967_295u32, "offset": 4_294_967_295u32, "includeTotal": true } }),
        json!({ "page": { "mode": "cursor", "limit": 0 } }),
        json!({ "page": { "mode": "cursor", "before": "" } }),
        json!({ "page": { "mode": "cursor", "after": "" } }),
        json!({ "sort": [{ "field": "stats.hp", "dir": "desc" }, { "field": "tags" }, { "field": "missing" }] }),
        json!({ "filter": { "op": "in", "field": "level", "values": [] } }),
        json!({ "filter": { "op": "eq", "field": "a.b.c.d.e.f", "value": null } }),
        json!({ "filter": { "op": "gt", "field": "name", "value": "D" } }),
        json!({ "filter": { "op": "lt", "field": "level", "value": 1e300 } }),
        json!({ "filter": { "op": "contains", "field": "name", "value": "" } }),
        json!({ "filter": { "op": "startsWith", "field": "level", "value": "1" } }),
        json!({ "filter": { "op": "text", "field": "level", "query": "ünïcödé 🐉", "mode": "fuzzy", "distance": 2 } }),
        json!({ "filter": { "op": "eq", "field": "tags", "value": ["mage"] } }),
    ];
    for q in queries {
        for resource in ["players", "plain"] {
            let (status, body) =
                s.ops(json!([{ "opId": "q", "kind": "query", "query": { "resource": resource, "query": q } }])).await;
            assert_eq!(status, 200, "{q}: {body}");
            let code = body["data"]["results"][0]["error"]["code"].as_str().unwrap_or("INVALID_QUERY");
            assert_eq!(code, "INVALID_QUERY", "{q}: {body}");
        }
    }
}
