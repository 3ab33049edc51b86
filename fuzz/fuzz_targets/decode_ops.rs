//! Request decoding: bytes → `OpsRequest` (the `POST /ops` body). When it parses:
//! - it must serialize and parse back to the same value (floats within 4 ULP, see
//!   `exact_floats`);
//! - every query op is compiled and run on the fixed indexed table, and the indexed and
//!   scanned results must agree;
//! - every write entry is applied with `apply_entry` to a fixed current record, to none, and
//!   to the table's record, whose result goes into the table (as the server does) before the
//!   ops after it run.
//!
//! Nothing may panic.

#![no_main]

use atoma::protocol::{OpBody, OpsRequest};
use atoma_fuzz::{apply_entries, check_query, exact_floats, json_eq, table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<OpsRequest>(data) else { return };
    let text = serde_json::to_string(&req).expect("a parsed request serializes");
    let again: OpsRequest = serde_json::from_str(&text).expect("a serialized request parses");
    if again != req {
        // Floats may come back a ULP off (see `exact_floats`): compare the JSON trees.
        let (a, b) =
            (serde_json::to_value(&again).expect("serializes"), serde_json::to_value(&req).expect("serializes"));
        assert!(json_eq(&a, &b, exact_floats()), "the request does not round-trip through JSON: {text}\n{a}\n{b}");
    }
    let mut t = table();
    for op in &req.ops {
        match &op.body {
            OpBody::Query { query } => check_query(&t, &query.query),
            OpBody::Write { write } => apply_entries(&mut t, &write.entries),
            OpBody::Pull { .. } => {}
        }
    }
});
