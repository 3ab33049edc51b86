//! Integration tests: each starts the real server on 127.0.0.1:0 and talks HTTP to it.

mod auth;
mod changes;
mod crud;
mod durability;
mod limits;
mod queries;
mod sse;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atoma_server::{RunningServer, Server, ServerConfig};
use serde_json::{Value as Json, json};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A temporary folder, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join("atoma-server-tests").join(unique(name));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client of one server, with an optional bearer token.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) token: Option<String>,
}

/// A running server with its data folder.
pub(crate) struct TestServer {
    pub(crate) server: RunningServer,
    pub(crate) api: Api,
    pub(crate) dir: TempDir,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Starts a server on 127.0.0.1:0 with a fresh redb data folder.
pub(crate) async fn start(config: ServerConfig) -> TestServer {
    let dir = TempDir::new("data");
    start_in(config, dir).await
}

/// Starts a server on 127.0.0.1:0 over an existing data folder.
pub(crate) async fn start_in(config: ServerConfig, dir: TempDir) -> TestServer {
    let config = config.with_bind("127.0.0.1:0".parse().expect("an address")).with_data_dir(dir.path());
    let server = Server::start(config).await.expect("the server starts");
    let api = Api { base: format!("http://{}", server.addr), client: reqwest::Client::new(), token: None };
    TestServer { server, api, dir }
}

impl TestServer {
    /// Shuts down and returns the data folder (to start again on it).
    pub(crate) async fn stop(self) -> TempDir {
        self.server.shutdown().await.expect("a clean shutdown");
        self.dir
    }
}

impl Api {
    /// The same server with another token.
    pub(crate) fn as_token(&self, token: &str) -> Api {
        Api { token: Some(token.to_owned()), ..self.clone() }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs raw bytes to /ops: status and JSON body (every response body must be JSON).
    pub(crate) async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (u16, Json) {
        let mut req = self.client.post(self.url("/ops")).header("content-type", "application/json").body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("the request is sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
        (status, json)
    }

    /// POSTs `{"meta": {"v": 1}, "ops": ops}`.
    pub(crate) async fn ops(&self, ops: Json) -> (u16, Json) {
        self.post_raw(json!({ "meta": { "v": 1 }, "ops": ops }).to_string()).await
    }

    /// One op; asserts a 200 and returns its result.
    pub(crate) async fn op(&self, op: Json) -> Json {
        let (status, body) = self.ops(json!([op])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true, "{body}");
        body["data"]["results"][0].clone()
    }

    /// A write op's result (`{opId, ok, data | error}`).
    pub(crate) async fn write(&self, resource: &str, entries: Json) -> Json {
        self.op(json!({ "opId": "w", "kind": "write", "write": { "resource": resource, "entries": entries } })).await
    }

    /// One entry's result; asserts the op succeeded.
    pub(crate) async fn write1(&self, resource: &str, entry: Json) -> Json {
        let r = self.write(resource, json!([entry])).await;
        assert_eq!(r["ok"], true, "{r}");
        r["data"]["results"][0].clone()
    }

    /// A query op's result.
    pub(crate) async fn query(&self, resource: &str, query: Json) -> Json {
        self.op(json!({ "opId": "q", "kind": "query", "query": { "resource": resource, "query": query } })).await
    }

    /// The records a query returns; asserts it succeeded.
    pub(crate) async fn records(&self, resource: &str, query: Json) -> Vec<Json> {
        let r = self.query(resource, query).await;
        assert_eq!(r["ok"], true, "{r}");
        r["data"]["data"].as_array().expect("a list").clone()
    }

    /// The ids a query returns, in order.
    pub(crate) async fn ids(&self, resource: &str, query: Json) -> Vec<String> {
        self.records(resource, query).await.iter().map(|r| r["id"].as_str().expect("an id").to_owned()).collect()
    }

    /// A pull op's result.
    pub(crate) async fn pull(&self, pull: Json) -> Json {
        self.op(json!({ "opId": "p", "kind": "changes.pull", "pull": pull })).await
    }

    /// Every change after `cursor` (following nextCursor), and the final cursor.
    pub(crate) async fn pull_all(&self, cursor: &str) -> (Vec<Json>, String) {
        let mut cursor = cursor.to_owned();
        let mut out = Vec::new();
        loop {
            let r = self.pull(json!({ "cursor": cursor, "limit": 100 })).await;
            assert_eq!(r["ok"], true, "{r}");
            let changes = r["data"]["changes"].as_array().expect("a list").clone();
            cursor = r["data"]["nextCursor"].as_str().expect("a cursor").to_owned();
            if changes.is_empty() {
                return (out, cursor);
            }
            out.extend(changes);
        }
    }
}

pub(crate) fn meta() -> Json {
    json!({ "idempotencyKey": unique("k"), "clientTimeMs": 1_760_000_000_000i64 })
}

pub(crate) fn create(id: &str, value: Json) -> Json {
    json!({ "entryId": unique("e"), "action": "create", "item": { "entityId": id, "value": value, "meta": meta() } })
}

pub(crate) fn update(id: &str, base: u64, value: Json) -> Json {
    json!({ "entryId": unique("e"), "action": "update",
            "item": { "entityId": id, "baseVersion": base, "value": value, "meta": meta() } })
}

pub(crate) fn upsert_loose(id: &str, value: Json) -> Json {
    json!({ "entryId": unique("e"), "action": "upsert", "item": { "entityId": id, "value": value, "meta": meta() },
            "options": { "upsert": { "mode": "loose" } } })
}

pub(crate) fn delete(id: &str, base: u64) -> Json {
    json!({ "entryId": unique("e"), "action": "delete", "item": { "entityId": id, "baseVersion": base, "meta": meta() } })
}

pub(crate) fn patch(id: &str, base: Option<u64>, ops: Json) -> Json {
    let mut item = json!({ "entityId": id, "ops": ops, "meta": meta() });
    if let Some(b) = base {
        item["baseVersion"] = b.into();
    }
    json!({ "entryId": unique("e"), "action": "patch", "item": item })
}

/// Sets the idempotency key of an entry.
pub(crate) fn with_key(mut entry: Json, key: &str) -> Json {
    entry["item"]["meta"]["idempotencyKey"] = key.into();
    entry
}

/// Reads an SSE stream until `done` holds for the text so far, or `within` passes.
pub(crate) async fn read_sse(
    resp: &mut reqwest::Response,
    text: &mut String,
    within: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(text) {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
        }
    }
}
