//! The `http` executor: queries and writes go through the batch engine to any server that
//! speaks the protocol, over reqwest on the plugin's runtime.

use std::sync::Arc;
use std::time::Duration;

use super::batch::{BatchConfig, BatchEngine, TaskContext, TraceIds, Transport};
use super::executor::{BoxFuture, Executor};
use crate::protocol::{
    ErrorKind, OpsRequest, OpsResponse, QueryRequest, QueryResult, RawOpsResponse, StandardError, WriteRequest,
    WriteResult,
};
use reqwest::header::CONTENT_TYPE;

/// `POST {base}/ops` over HTTP/1.1 with JSON.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    ops_url: String,
    token: Option<String>,
}

impl HttpTransport {
    /// A transport to `base_url` (e.g. `http://127.0.0.1:8787`), with an optional bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, StandardError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StandardError::adapter("HTTP_CLIENT", format!("could not build the HTTP client: {e}")))?;
        Ok(Self { client, ops_url: format!("{}/ops", base_url.trim_end_matches('/')), token })
    }
}

/// The error for a non-200 answer: the server's `StandardError` if the body has one.
fn status_error(status: reqwest::StatusCode, body: &[u8]) -> StandardError {
    let parsed = serde_json::from_slice::<OpsResponse>(body).ok().and_then(|r| r.error);
    let mut e = parsed.unwrap_or_else(|| {
        StandardError::new(
            if status.is_server_error() { "INTERNAL" } else { "BAD_REQUEST" },
            if status.is_server_error() { ErrorKind::Internal } else { ErrorKind::Validation },
            format!("the server answered {status}"),
        )
    });
    // Retry 5xx and 429; never other 4xx.
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        e.retryable = Some(true);
    } else if status.is_client_error() {
        e.retryable = Some(false);
    }
    e
}

impl HttpTransport {
    /// Posts `req` and decodes a 200 answer as `R`.
    fn post<R: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        req: &OpsRequest,
        trace: Option<TraceIds>,
    ) -> BoxFuture<Result<R, StandardError>> {
        let body = match serde_json::to_vec(req) {
            Ok(b) => b,
            Err(e) => {
                let e = StandardError::internal(format!("encoding the request failed: {e}"));
                return Box::pin(async move { Err(e) });
            }
        };
        let mut rb = self.client.post(&self.ops_url).header(CONTENT_TYPE, "application/json").body(body);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(t) = trace {
            rb = rb.header("x-atoma-trace-id", t.trace_id).header("x-atoma-request-id", t.request_id);
        }
        Box::pin(async move {
            let resp = rb
                .send()
                .await
                .map_err(|e| StandardError::adapter("NETWORK", format!("request failed: {e}")).retryable())?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| {
                StandardError::adapter("NETWORK", format!("reading the response failed: {e}")).retryable()
            })?;
            if status != reqwest::StatusCode::OK {
                return Err(status_error(status, &body));
            }
            serde_json::from_slice::<R>(&body).map_err(|e| {
                StandardError::adapter("BAD_RESPONSE", format!("the response is not a protocol envelope: {e}"))
                    .retryable()
            })
        })
    }
}

impl Transport for HttpTransport {
    fn send(&self, req: OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<OpsResponse, StandardError>> {
        self.post(&req, trace)
    }

    /// Each op's data is kept as its JSON text, for the engine to decode straight into its type.
    fn send_raw(&self, req: &OpsRequest, trace: Option<TraceIds>) -> BoxFuture<Result<RawOpsResponse, StandardError>> {
        self.post(req, trace)
    }
}

/// The `http` executor: a batch engine over an [`HttpTransport`] (or any transport).
#[derive(Clone)]
pub struct HttpExecutor {
    engine: BatchEngine,
}

impl HttpExecutor {
    /// An executor for the server at `base_url`.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        config: BatchConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, StandardError> {
        let transport = Arc::new(HttpTransport::new(base_url, token)?);
        Ok(Self { engine: BatchEngine::new(transport, config, runtime) })
    }

    /// An executor over an existing engine.
    pub fn with_engine(engine: BatchEngine) -> Self {
        Self { engine }
    }

    /// The batch engine (for its events, or to dispose it).
    pub fn engine(&self) -> &BatchEngine {
        &self.engine
    }
}

impl Executor for HttpExecutor {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        let ctx = TaskContext { trace_id: None, emitter: Some(req.resource.clone()) };
        self.engine.enqueue_query(req.resource, req.query, ctx)
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        let ctx = TaskContext { trace_id: None, emitter: Some(req.resource.clone()) };
        self.engine.enqueue_write(req, ctx)
    }

    fn end_frame(&self) {
        self.engine.flush();
    }
}
