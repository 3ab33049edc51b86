//! The HTTP surface: `POST /ops`, `GET /sync/subscribe`, `GET /health`, and the error
//! envelope for everything else.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use atoma::protocol::{ErrorKind, Notify, StandardError, valid_resource};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value as Json;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{err, invalid_request};
use crate::ops::{HeaderTrace, error_response};
use crate::state::{Notice, Right, ServerState};

/// The SSE reconnection delay the protocol names.
const RETRY: Duration = Duration::from_millis(2000);

/// The routes of the protocol over a server state. Merge or nest it into a game backend's
/// own router; [`crate::Server`] serves exactly this.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/ops", post(ops).fallback(|| async { method_not_allowed("POST") }))
        .route("/sync/subscribe", get(subscribe).fallback(|| async { method_not_allowed("GET, HEAD") }))
        .route("/health", get(health).fallback(|| async { method_not_allowed("GET, HEAD") }))
        .fallback(not_found)
        .with_state(state)
}

fn json(status: StatusCode, body: &Json) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            r#"{"ok":false,"error":{"code":"INTERNAL","message":"encoding the response failed","kind":"internal"},"meta":{"v":1}}"#,
        )
            .into_response(),
    }
}

fn error(e: StandardError) -> Response {
    let (status, body) = error_response(e);
    json(status, &body)
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error(err("METHOD_NOT_ALLOWED", ErrorKind::Validation, format!("this path takes {allow}")));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn not_found() -> Response {
    error(StandardError::not_found("no such path (the protocol has POST /ops, GET /sync/subscribe, GET /health)"))
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Reads a body of at most `max` bytes.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, StandardError> {
    let too_large = || {
        err("PAYLOAD_TOO_LARGE", ErrorKind::Limits, format!("the body is larger than {max} bytes"))
            .with_details(serde_json::json!({ "limit": max }))
    };
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(err("BAD_REQUEST", ErrorKind::Validation, format!("reading the body failed: {e}"))),
    }
}

async fn ops(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Body) -> Response {
    let principal = match state.authenticate(&headers) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let bytes = match read_body(&headers, body, state.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let trace = HeaderTrace {
        trace_id: header_text(&headers, "x-atoma-trace-id"),
        request_id: header_text(&headers, "x-atoma-request-id"),
    };
    let task = tokio::task::spawn_blocking(move || state.handle_ops(&principal, &bytes, trace));
    match task.await {
        Ok((status, body)) => {
            (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
        }
        Err(e) => error(StandardError::internal(format!("the request failed: {e}"))),
    }
}

/// The `resources` of a query string (`resources=a&resources=b`, also `resources=a,b`).
fn subscribed_resources(query: Option<&str>) -> Result<BTreeSet<String>, StandardError> {
    let mut out = BTreeSet::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "resources" && key != "resources[]" && key != "resources%5B%5D" {
            continue;
        }
        for name in value.split(',').filter(|n| !n.is_empty()) {
            if !valid_resource(name) {
                return Err(invalid_request(format!("resource {name:?} must match [A-Za-z0-9_.-]{{1,64}}")));
            }
            out.insert(name.to_owned());
        }
    }
    Ok(out)
}

struct Subscriber {
    state: Arc<ServerState>,
    principal: String,
    /// Empty: every resource the principal may read.
    resources: BTreeSet<String>,
    notices: tokio::sync::broadcast::Receiver<Arc<Notice>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    heartbeat: tokio::time::Interval,
    started: bool,
}

impl Subscriber {
    fn wants(&self, resource: &str, owner: Option<&str>) -> bool {
        (self.resources.is_empty() || self.resources.contains(resource))
            && self.state.visible(&self.principal, resource, owner)
    }

    fn notify(&self, resources: Vec<String>, cursor: u64) -> Option<Event> {
        if resources.is_empty() {
            return None;
        }
        let data = serde_json::to_string(&Notify { resources, cursor: cursor.to_string() }).ok()?;
        Some(Event::default().event("sync.notify").data(data))
    }

    /// The next event, or `None` when the server shuts down.
    async fn next(&mut self) -> Option<Event> {
        if !self.started {
            self.started = true;
            return Some(Event::default().retry(RETRY));
        }
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = self.heartbeat.tick() => return Some(Event::default().comment("ping")),
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        return None;
                    }
                }
                notice = self.notices.recv() => match notice {
                    Ok(n) => {
                        let mut names: Vec<String> = n
                            .touched
                            .iter()
                            .filter(|(r, o)| self.wants(r, o.as_deref()))
                            .map(|(r, _)| r.clone())
                            .collect();
                        names.dedup();
                        if let Some(ev) = self.notify(names, n.cursor) {
                            return Some(ev);
                        }
                    }
                    // Missed notices: name every subscribed resource so the client pulls.
                    Err(RecvError::Lagged(_)) => {
                        let names: Vec<String> = if self.resources.is_empty() {
                            self.state
                                .tables()
                                .keys()
                                .filter(|r| self.state.authorize(&self.principal, r, Right::Read).is_ok())
                                .cloned()
                                .collect::<BTreeSet<_>>()
                                .into_iter()
                                .collect()
                        } else {
                            self.resources.iter().cloned().collect()
                        };
                        if let Some(ev) = self.notify(names, self.state.head()) {
                            return Some(ev);
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

async fn subscribe(State(state): State<Arc<ServerState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let principal = match state.authenticate(&headers) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let resources = match subscribed_resources(query.as_deref()) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    for r in &resources {
        if let Err(e) = state.authorize(&principal, r, Right::Read) {
            return error(e);
        }
    }
    let period = Duration::from_secs(state.config.heartbeat_secs.max(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sub = Subscriber {
        notices: state.notices.subscribe(),
        shutdown: state.shutdown.subscribe(),
        state,
        principal,
        resources,
        heartbeat,
        started: false,
    };
    let stream = futures_util::stream::unfold(sub, |mut sub| async move {
        let ev = sub.next().await?;
        Some((Ok::<Event, Infallible>(ev), sub))
    });
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut r = Sse::new(stream).into_response();
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_the_query_string() {
        let r = subscribed_resources(Some("resources=a&resources=b&x=1&resources=c,d")).expect("valid");
        assert_eq!(r.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert!(subscribed_resources(None).expect("valid").is_empty());
        assert!(subscribed_resources(Some("resources=a%20b")).is_err());
        assert!(subscribed_resources(Some("resources")).expect("valid").is_empty());
    }
}
