//! The request and response envelopes of `POST /ops`, the `changes.pull` op, and the SSE
//! notification.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use super::{QueryRequest, StandardError, WriteRequest};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request / response metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// The protocol version (1).
    #[serde(default = "one")]
    pub v: u32,
    /// A trace id shared by every op of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// A request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The client device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The client's clock (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_time_ms: Option<i64>,
    /// The server's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time_ms: Option<i64>,
    /// Warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

fn one() -> u32 {
    PROTOCOL_VERSION
}

impl Meta {
    /// Version 1, nothing else.
    pub fn v1() -> Self {
        Meta { v: PROTOCOL_VERSION, ..Meta::default() }
    }
}

/// A warning in `meta.warnings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// A stable code.
    pub code: String,
    /// For people.
    pub message: String,
    /// Structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Json>,
}

/// `changes.pull`: changes after a cursor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Where to continue (`"0"`: the beginning).
    pub cursor: String,
    /// At most this many changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only these resources (`None`: all the caller may read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
}

/// A change's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    /// Created or updated.
    Upsert,
    /// Deleted.
    Delete,
}

/// One change in a pull result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The resource.
    pub resource: String,
    /// The record.
    pub entity_id: String,
    /// Upsert or delete.
    pub kind: ChangeKind,
    /// The record's version after the change.
    pub version: u64,
    /// When (server clock).
    pub changed_at_ms: i64,
    /// **(ext)** The record, for upserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
}

/// A pull's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullResult {
    /// Where the next pull continues.
    pub next_cursor: String,
    /// The changes, oldest first.
    pub changes: Vec<Change>,
}

/// One op of a request, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum OpBody {
    /// A query.
    #[serde(rename = "query")]
    Query {
        /// The query.
        query: QueryRequest,
    },
    /// A write.
    #[serde(rename = "write")]
    Write {
        /// The write.
        write: WriteRequest,
    },
    /// A pull.
    #[serde(rename = "changes.pull")]
    Pull {
        /// The pull.
        pull: PullRequest,
    },
}

/// One op: `{ "opId", "kind", …, "meta"? }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteOp {
    /// Unique in the request.
    pub op_id: String,
    /// The op.
    #[serde(flatten)]
    pub body: OpBody,
    /// Per-op metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

/// The body of `POST /ops`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpsRequest {
    /// Metadata.
    #[serde(default = "Meta::v1")]
    pub meta: Meta,
    /// The ops, answered in order.
    pub ops: Vec<RemoteOp>,
}

/// The result of one op. `D` is the type of its data: a JSON tree by default, or
/// [`RawValue`] (see [`RawOpsResponse`]) to decode each op's data straight into its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "D: Deserialize<'de>"))]
pub struct OpResult<D = Json> {
    /// The op.
    pub op_id: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its data (`QueryResult`, `WriteResult`, `PullResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StandardError>,
}

impl<D> OpResult<D> {
    /// A success.
    pub fn ok(op_id: String, data: D) -> Self {
        Self { op_id, ok: true, data: Some(data), error: None }
    }
    /// A failure.
    pub fn err(op_id: String, error: StandardError) -> Self {
        Self { op_id, ok: false, data: None, error: Some(error) }
    }
}

/// `data` of a successful response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct OpsData<D = Json> {
    /// One per op, in op order.
    pub results: Vec<OpResult<D>>,
}

impl<D> Default for OpsData<D> {
    fn default() -> Self {
        Self { results: Vec::new() }
    }
}

/// The body of a `POST /ops` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct OpsResponse<D = Json> {
    /// Whether the request as a whole was understood.
    pub ok: bool,
    /// The results (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<OpsData<D>>,
    /// Why the request was rejected (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StandardError>,
    /// Metadata.
    pub meta: Meta,
}

/// A response whose ops' data are still undecoded JSON text: the client decodes each straight
/// into its type (`QueryResult`, `WriteResult`…) without building a JSON tree first. The same
/// wire format as [`OpsResponse`].
pub type RawOpsResponse = OpsResponse<Box<RawValue>>;

impl RawOpsResponse {
    /// The same response with undecoded data (each op's data is encoded once more).
    pub fn from_tree(resp: OpsResponse) -> Result<Self, serde_json::Error> {
        let data = match resp.data {
            None => None,
            Some(d) => Some(OpsData {
                results: d
                    .results
                    .into_iter()
                    .map(|r| {
                        let data = r.data.as_ref().map(serde_json::value::to_raw_value).transpose()?;
                        Ok(OpResult { op_id: r.op_id, ok: r.ok, data, error: r.error })
                    })
                    .collect::<Result<_, serde_json::Error>>()?,
            }),
        };
        Ok(OpsResponse { ok: resp.ok, data, error: resp.error, meta: resp.meta })
    }
}

/// The data of an SSE `sync.notify` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// The resources that changed.
    pub resources: Vec<String>,
    /// The newest cursor.
    pub cursor: String,
}
