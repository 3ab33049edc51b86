//! GET /sync/subscribe: retry, heartbeat, notify, filtering, auth.

use std::time::Duration;

use atoma_server::{ResourceConfig, ServerConfig};
use serde_json::{Value as Json, json};

use crate::*;

async fn subscribe(api: &Api, query: &str) -> reqwest::Response {
    let mut req = api.client.get(api.url(&format!("/sync/subscribe{query}")));
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("subscribed")
}

/// The `sync.notify` data payloads in an SSE text.
fn notifies(text: &str) -> Vec<Json> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "event: sync.notify" {
            let data = lines.next().and_then(|l| l.strip_prefix("data: ")).expect("a data line");
            out.push(serde_json::from_str(data).expect("JSON data"));
        }
    }
    out
}

#[tokio::test]
async fn retry_heartbeat_and_notify() {
    let s = start(ServerConfig::new().with_heartbeat_secs(1)).await;
    let mut resp = subscribe(&s, "?resources=players&resources=guilds").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let mut text = String::new();
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.contains("retry: 2000")).await;
    assert!(text.starts_with("retry: 2000\n"), "{text:?}");
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.contains(": ping")).await;
    assert!(text.contains("\n\n: ping\n\n") || text.contains(": ping\n"), "{text:?}");

    // A change to an unsubscribed resource says nothing; one to a subscribed resource notifies.
    s.write1("items", create("i1", json!({}))).await;
    s.write1("players", create("p1", json!({}))).await;
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.contains("event: sync.notify")).await;
    let n = notifies(&text);
    assert_eq!(n, [json!({ "resources": ["players"], "cursor": "2" })], "{text:?}");
    assert!(!text.contains("items"), "{text:?}");

    // One request writing two subscribed resources: one notify naming both.
    let (status, _) = s
        .ops(json!([
            { "opId": "a", "kind": "write", "write": { "resource": "guilds", "entries": [create("g1", json!({}))] } },
            { "opId": "b", "kind": "write", "write": { "resource": "players", "entries": [create("p2", json!({}))] } }
        ]))
        .await;
    assert_eq!(status, 200);
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| notifies(t).len() >= 2).await;
    assert_eq!(notifies(&text)[1], json!({ "resources": ["guilds", "players"], "cursor": "4" }));
    // The cursor in a notify is where a pull finds the change.
    let r = s.pull(json!({ "cursor": "2" })).await;
    assert_eq!(r["data"]["nextCursor"], "4");

    // More pings keep coming.
    let pings = text.matches(": ping").count();
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.matches(": ping").count() > pings).await;
    assert!(text.matches(": ping").count() > pings);

    // Without `resources`: everything the principal may read.
    let mut all = subscribe(&s, "").await;
    let mut text = String::new();
    read_sse(&mut all, &mut text, Duration::from_secs(5), |t| t.contains("retry")).await;
    s.write1("items", create("i2", json!({}))).await;
    read_sse(&mut all, &mut text, Duration::from_secs(5), |t| t.contains("event: sync.notify")).await;
    assert_eq!(notifies(&text), [json!({ "resources": ["items"], "cursor": "5" })]);

    // A bad resource name is a request error.
    let resp = subscribe(&s, "?resources=bad%20name").await;
    assert_eq!(resp.status(), 422);
    let body: Json = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");

    // Shutting down ends open streams (and does not hang on them).
    tokio::time::timeout(Duration::from_secs(10), s.stop()).await.expect("shutdown does not hang on SSE");
}

#[tokio::test]
async fn subscriptions_need_auth_and_never_name_hidden_changes() {
    let config = ServerConfig::new()
        .with_heartbeat_secs(1)
        .with_token("t-alice", "alice")
        .with_token("t-bob", "bob")
        .with_resource(ResourceConfig::new("notes").with_read(["*"]).with_write(["*"]).with_owner_field("ownerId"))
        .with_resource(ResourceConfig::new("secret").with_read(["alice"]).with_write(["alice"]));
    let s = start(config).await;
    let alice = s.as_token("t-alice");
    let bob = s.as_token("t-bob");

    let resp = subscribe(&s, "?resources=notes").await;
    assert_eq!(resp.status(), 401);
    let body: Json = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert_eq!(subscribe(&s.as_token("wrong"), "").await.status(), 401);

    let resp = subscribe(&bob, "?resources=secret").await;
    assert_eq!(resp.status(), 403);
    let body: Json = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "ACCESS_DENIED");
    assert_eq!(subscribe(&bob, "?resources=unlisted").await.status(), 403);

    // Bob hears about his own notes only, and nothing of `secret`.
    let mut resp = subscribe(&bob, "").await;
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.contains("retry")).await;
    alice.write1("notes", create("a1", json!({ "text": "alice's" }))).await; // 1
    alice.write1("secret", create("s1", json!({}))).await; // 2
    bob.write1("notes", create("b1", json!({ "text": "bob's" }))).await; // 3
    read_sse(&mut resp, &mut text, Duration::from_secs(5), |t| t.contains("event: sync.notify")).await;
    assert_eq!(notifies(&text), [json!({ "resources": ["notes"], "cursor": "3" })], "{text:?}");
    assert!(!text.contains("secret"));
}
