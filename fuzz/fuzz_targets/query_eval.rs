//! Query evaluation: bytes → `Query` (the wire JSON of a query) → compile → run on the fixed
//! indexed table with the planner AND by plain scan: the ids (in order) and the page info
//! must be equal, and a cursor page is followed once. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use atoma::JsonRecord;
use atoma::core::{Query, Table};
use atoma_fuzz::{check_query, table};
use libfuzzer_sys::fuzz_target;

/// The table is built once: queries never change it.
fn fixed() -> &'static Table<JsonRecord> {
    static TABLE: OnceLock<Table<JsonRecord>> = OnceLock::new();
    TABLE.get_or_init(table)
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = serde_json::from_slice::<Query>(data) else { return };
    check_query(fixed(), &q);
});
