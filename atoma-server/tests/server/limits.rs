//! Limits, malformed input, and the HTTP surface around /ops.

use atoma_server::{Limits, ServerConfig};
use serde_json::{Value as Json, json};

use crate::*;

fn small() -> ServerConfig {
    ServerConfig::new().with_limits(Limits { max_body_bytes: 2048, max_ops: 3, max_entries: 2, ..Limits::default() })
}

fn assert_envelope(status: u16, body: &Json, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["error"]["kind"].is_string(), "{body}");
    assert_eq!(body["meta"]["v"], 1, "{body}");
}

#[tokio::test]
async fn limits_have_their_codes() {
    let s = start(small()).await;
    // 413 (declared length, and a body streamed without one).
    let big = format!(r#"{{"ops":[],"pad":"{}"}}"#, "x".repeat(4096));
    let (status, body) = s.post_raw(big.clone()).await;
    assert_envelope(status, &body, 413, "PAYLOAD_TOO_LARGE");
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big[..2000].to_owned()), Ok(big[2000..].to_owned())];
    let (status, body) = s.post_raw(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).await;
    assert_envelope(status, &body, 413, "PAYLOAD_TOO_LARGE");

    // 422 TOO_MANY_OPS.
    let q = |id: &str| json!({ "opId": id, "kind": "query", "query": { "resource": "a", "query": {} } });
    let (status, body) = s.ops(json!([q("1"), q("2"), q("3"), q("4")])).await;
    assert_envelope(status, &body, 422, "TOO_MANY_OPS");
    let (status, _) = s.ops(json!([q("1"), q("2"), q("3")])).await;
    assert_eq!(status, 200);

    // Per-op TOO_MANY_ITEMS; the other op still runs.
    let (status, body) = s
        .ops(json!([
            { "opId": "big", "kind": "write", "write": { "resource": "a",
                "entries": [create("x1", json!({})), create("x2", json!({})), create("x3", json!({}))] } },
            { "opId": "ok", "kind": "write", "write": { "resource": "a", "entries": [create("y1", json!({}))] } }
        ]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["results"][0]["error"]["code"], "TOO_MANY_ITEMS");
    assert_eq!(body["data"]["results"][0]["error"]["kind"], "limits");
    assert_eq!(body["data"]["results"][1]["ok"], true);
    assert_eq!(s.ids("a", json!({})).await, ["y1"]);

    // Duplicate op ids.
    let (status, body) = s.ops(json!([q("1"), q("1")])).await;
    assert_envelope(status, &body, 422, "INVALID_REQUEST");
}

#[tokio::test]
async fn malformed_bodies_get_4xx_envelopes() {
    let s = start(ServerConfig::new()).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!("{{\"ops\":[],\"meta\":{}1{}}}", "{\"a\":".repeat(200), "}".repeat(200));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "INVALID_BODY"),
        (b"".to_vec(), 400, "INVALID_BODY"),
        (b"[]".to_vec(), 400, "INVALID_BODY"),
        (b"[{\"ops\":[]}]".to_vec(), 400, "INVALID_BODY"),
        (b"42".to_vec(), 400, "INVALID_BODY"),
        (b"null".to_vec(), 400, "INVALID_BODY"),
        (b"{\"ops\":[]".to_vec(), 400, "INVALID_BODY"),
        (vec![b'{', 0xff, 0xfe, b'}'], 400, "INVALID_BODY"),
        (deep.into_bytes(), 400, "INVALID_BODY"),
        (deep_obj.into_bytes(), 400, "INVALID_BODY"),
        (br#"{"ops":[],"meta":{"v":1e999}}"#.to_vec(), 400, "INVALID_BODY"),
        (b"{}".to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":{}}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":"q"}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[1]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[null]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"kind":"query"}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":5,"kind":"query"}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"","kind":"query"}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"a"}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"a","kind":7}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"a","kind":"explode"}]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"a","kind":"query","query":[]}]}"#.to_vec(), 200, ""),
        (br#"{"ops":[],"meta":{"v":2}}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[],"meta":{"v":"one"}}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[],"meta":{"v":1e30}}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[],"meta":[]}"#.to_vec(), 422, "INVALID_REQUEST"),
        (br#"{"ops":[{"opId":"a","kind":"query","meta":5,"query":{}}]}"#.to_vec(), 422, "INVALID_REQUEST"),
    ];
    for (body, want, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, json) = s.post_raw(body).await;
        assert!(status < 500, "{shown}: {status} {json}");
        if want == 200 {
            assert_eq!(status, 200, "{shown}: {json}");
            assert_eq!(json["data"]["results"][0]["ok"], false, "{shown}: {json}");
        } else {
            assert_envelope(status, &json, want, code);
        }
    }

    // Wrong types inside an op's payload fail that op (200), with the payload's code.
    let (status, body) = s
        .post_raw(
            json!({ "ops": [
                { "opId": "q1", "kind": "query", "query": { "resource": 5, "query": {} } },
                { "opId": "q2", "kind": "query", "query": { "resource": "a", "query": { "page": { "mode": "offset", "limit": 1e30 } } } },
                { "opId": "w1", "kind": "write", "write": { "resource": "a", "entries": [
                    { "entryId": "e", "action": "update", "item": { "entityId": "x", "baseVersion": 1e30, "value": {}, "meta": meta() } }] } },
                { "opId": "w2", "kind": "write", "write": { "resource": "a", "entries": [
                    { "entryId": "e", "action": "frobnicate", "item": { "entityId": "x", "meta": meta() } }] } },
                { "opId": "w3", "kind": "write", "write": { "resource": "a", "entries": "all" } },
                { "opId": "w4", "kind": "write", "write": { "resource": "a", "entries": [
                    { "entryId": "e", "action": "create", "item": { "entityId": "x", "value": [1, 2], "meta": meta() } }] } },
                { "opId": "w5", "kind": "write", "write": { "resource": "a", "entries": [
                    { "entryId": "e", "action": "create", "item": { "entityId": "x", "value": {},
                      "meta": { "idempotencyKey": "k", "clientTimeMs": "__HUGE__" } } }] } },
                { "opId": "w6", "kind": "write", "write": { "resource": "a", "entries": [
                    { "entryId": "e", "action": "create", "item": { "entityId": "", "value": {}, "meta": meta() } }] } },
                { "opId": "p1", "kind": "changes.pull", "pull": { "cursor": "0", "limit": 1e30 } }
            ] })
            .to_string()
            .replace("\"__HUGE__\"", "99999999999999999999999"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<(String, String)> = body["data"]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let code = r["error"]["code"].as_str().or_else(|| r["data"]["results"][0]["error"]["code"].as_str());
            (r["opId"].as_str().expect("op id").to_owned(), code.unwrap_or("none").to_owned())
        })
        .collect();
    let want = [
        ("q1", "INVALID_QUERY"),
        ("q2", "INVALID_QUERY"),
        ("w1", "INVALID_WRITE"),
        ("w2", "INVALID_WRITE"),
        ("w3", "INVALID_WRITE"),
        ("w4", "INVALID_WRITE"),
        ("w5", "INVALID_WRITE"),
        ("w6", "INVALID_WRITE"),
        ("p1", "INVALID_REQUEST"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(codes, want, "{body}");
    assert!(s.ids("a", json!({})).await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn http_surface() {
    let s = start(ServerConfig::new()).await;
    let resp = s.client.get(s.url("/health")).send().await.expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Json>().await.expect("JSON"), json!({ "ok": true }));

    let resp = s.client.get(s.url("/nowhere")).send().await.expect("sent");
    assert_eq!(resp.status(), 404);
    let body: Json = resp.json().await.expect("JSON");
    assert_envelope(404, &body, 404, "NOT_FOUND");

    let resp = s.client.get(s.url("/ops")).send().await.expect("sent");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    let body: Json = resp.json().await.expect("JSON");
    assert_envelope(405, &body, 405, "METHOD_NOT_ALLOWED");
    let resp = s.client.post(s.url("/health")).send().await.expect("sent");
    assert_eq!(resp.status(), 405);
    let resp = s.client.delete(s.url("/sync/subscribe")).send().await.expect("sent");
    assert_eq!(resp.status(), 405);

    // Meta: v, serverTimeMs, and the trace ids echoed.
    let (status, body) = s
        .post_raw(json!({ "meta": { "v": 1, "traceId": "t1", "requestId": "r1", "deviceId": "d1", "clientTimeMs": 1 }, "ops": [] }).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["data"]["results"], json!([]));
    assert_eq!(body["meta"]["v"], 1);
    assert_eq!(body["meta"]["traceId"], "t1");
    assert_eq!(body["meta"]["requestId"], "r1");
    assert!(body["meta"]["serverTimeMs"].as_i64().is_some_and(|t| t > 1_700_000_000_000));
    // From the headers when meta has none; no meta at all is version 1.
    let resp = s
        .client
        .post(s.url("/ops"))
        .header("x-atoma-trace-id", "t2")
        .header("x-atoma-request-id", "r2")
        .body(r#"{"ops":[]}"#)
        .send()
        .await
        .expect("sent");
    let body: Json = resp.json().await.expect("JSON");
    assert_eq!((body["meta"]["traceId"].clone(), body["meta"]["requestId"].clone()), (json!("t2"), json!("r2")));
}
