//! The protocol's JSON shapes, exactly as PROTOCOL.md writes them, round-trip through the
//! wire types.

use atoma::protocol::{OpBody, OpsRequest, OpsResponse, PullResult, WriteResult};
use serde_json::json;

#[test]
fn a_request_with_every_op_kind_round_trips() {
    let wire = json!({
        "meta": { "v": 1, "traceId": "t1", "requestId": "r1", "deviceId": "d1", "clientTimeMs": 1760000000000i64 },
        "ops": [
            { "opId": "q1", "kind": "query",
              "query": { "resource": "players",
                         "query": { "filter": {"op": "gte", "field": "level", "value": 10},
                                    "sort": [ { "field": "score", "dir": "desc" } ],
                                    "page": { "mode": "offset", "limit": 20, "offset": 0, "includeTotal": true } } } },
            { "opId": "w1", "kind": "write",
              "write": { "resource": "players",
                         "entries": [ { "entryId": "e1", "action": "update",
                                        "item": { "entityId": "p1", "baseVersion": 3, "value": { "score": 10 },
                                                  "meta": { "idempotencyKey": "k-7f3a", "clientTimeMs": 1760000000000i64 } },
                                        "options": { "merge": true, "returning": true } },
                                      { "entryId": "e2", "action": "patch",
                                        "item": { "entityId": "p1", "ops": [ { "op": "inc", "path": "gold", "value": 5 } ],
                                                  "meta": { "idempotencyKey": "k-2", "clientTimeMs": 1 } } } ] } },
            { "opId": "p1", "kind": "changes.pull", "pull": { "cursor": "0", "limit": 200, "resources": ["players"] } }
        ]
    });
    let req: OpsRequest = serde_json::from_value(wire.clone()).expect("parses");
    assert!(matches!(req.ops[2].body, OpBody::Pull { .. }));
    assert_eq!(serde_json::to_value(&req).expect("serializes"), wire);
}

#[test]
fn responses_round_trip() {
    let wire = json!({
        "ok": true,
        "data": { "results": [
            { "opId": "q1", "ok": true, "data": { "data": [ { "id": "p1", "version": 4, "score": 10 } ], "pageInfo": { "hasNext": false, "total": 1 } } },
            { "opId": "w1", "ok": false, "error": { "code": "CONFLICT", "message": "stale", "kind": "conflict" } }
        ] },
        "meta": { "v": 1, "serverTimeMs": 1760000000123i64 }
    });
    let resp: OpsResponse = serde_json::from_value(wire.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&resp).expect("serializes"), wire);
    let rejected = json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "no token", "kind": "auth" }, "meta": { "v": 1 } });
    let r: OpsResponse = serde_json::from_value(rejected.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&r).expect("serializes"), rejected);

    let write = json!({ "transactionApplied": true, "results": [
        { "entryId": "e1", "ok": true, "entityId": "p1", "version": 4, "data": { "id": "p1", "version": 4 } },
        { "entryId": "e2", "ok": false, "error": { "code": "CONFLICT", "message": "m", "kind": "conflict" },
          "current": { "value": { "id": "p1", "version": 5 }, "version": 5 } } ] });
    let w: WriteResult = serde_json::from_value(write.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&w).expect("serializes"), write);

    let pull = json!({ "nextCursor": "1042", "changes": [
        { "resource": "players", "entityId": "p1", "kind": "upsert", "version": 4, "changedAtMs": 1760000000000i64, "value": { "id": "p1", "version": 4 } },
        { "resource": "players", "entityId": "p2", "kind": "delete", "version": 2, "changedAtMs": 1760000000001i64 } ] });
    let p: PullResult = serde_json::from_value(pull.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&p).expect("serializes"), pull);
}

#[test]
fn malformed_envelopes_are_errors_not_panics() {
    for bad in [
        json!({"ops": [{"opId": "x", "kind": "nope"}]}),
        json!({"ops": [{"opId": "x", "kind": "query"}]}),
        json!({"ops": "no"}),
        json!({"ops": [{"opId": "x", "kind": "write", "write": {"resource": "p", "entries": [{"entryId": "e", "action": "explode", "item": {"meta": {"idempotencyKey": "k", "clientTimeMs": 1}}}]}}]}),
        json!([1, 2]),
    ] {
        assert!(serde_json::from_value::<OpsRequest>(bad).is_err());
    }
}
