//! Shared fixtures and checks of the fuzz targets: a small fixed table of JSON records with
//! indexes of every kind, the indexed-vs-scan oracle for queries, and the server's way of
//! applying write entries.

use atoma::JsonRecord;
use atoma::core::{Entry, IndexSpec, Keyed, Page, Query, Table};
use atoma::protocol::{Stored, WireWriteEntry, apply_entry, entry_target};
use serde_json::{Map, Value, json};

/// Known findings the targets can step around so that fuzzing goes on past them.
/// `ATOMA_FUZZ_KNOWN=0` steps around them; by default they are exercised.
///
/// - **-0.0** (fixed in `core::value`): a field holding `-0.0` was `Key::Int(0)` in the
///   indexes but below `0` for the filter evaluator, so `eq 0` / `gte 0` matched it with an
///   index and missed it by scan. Zeros now compare equal everywhere.
pub fn known_issues() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ATOMA_FUZZ_KNOWN").map_or(true, |v| v != "0"))
}

/// Whether floats must survive a JSON round trip bit for bit (`ATOMA_FUZZ_EXACT_FLOATS=1`).
///
/// By default they may come back up to 4 ULP off: serde_json without its `float_roundtrip`
/// feature (atoma does not enable it) parses some decimal numbers one ULP away from the
/// nearest double. For example, the integer literal `-92233722368547758081` parses to
/// `-9.223372236854775e19`, which prints back as `-9.223372236854777e19`. Not a panic and not
/// atoma's code, but it means a float can change on its way through the server (see
/// docs/benchmarks.md and the fuzzing notes in fuzz/run.sh).
pub fn exact_floats() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ATOMA_FUZZ_EXACT_FLOATS").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Whether two JSON values are equal, numbers within 4 ULP unless `exact`.
pub fn json_eq(a: &Value, b: &Value, exact: bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if exact || x == y {
                return x == y;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 4
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y, exact)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w, exact)))
        }
        _ => a == b,
    }
}

/// Whether a JSON value holds a `-0.0` anywhere (see [`known_issues`]).
pub fn has_negative_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|x| x == 0.0 && x.is_sign_negative()),
        Value::Array(a) => a.iter().any(has_negative_zero),
        Value::Object(m) => m.values().any(has_negative_zero),
        _ => false,
    }
}

/// The fixed records: mixed types on purpose (ints, floats, big numbers, strings, null,
/// missing fields, lists, nested objects, non-objects where objects are indexed).
pub fn records() -> Vec<Value> {
    let guilds = [json!("red"), json!("blue"), json!("Red"), Value::Null, json!(7), json!(["red", "blue"])];
    let names = [
        "Alice the Brave",
        "alice",
        "Bob",
        "dragon slayer",
        "Zoë Ünicode",
        "",
        "  spaced  out ",
        "red dragon",
        "x",
        "Alicia",
    ];
    let levels = [
        json!(1),
        json!(2.5),
        json!(-3),
        json!("7"),
        Value::Null,
        json!(0),
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-0.0),
        json!(true),
    ];
    // -0.0 is a known finding (see `known_issues`): 0.25 stands in for it by default.
    let levels = levels.map(|l| if has_negative_zero(&l) && !known_issues() { json!(0.25) } else { l });
    let mut out = Vec::new();
    for i in 0..44usize {
        let mut m = Map::new();
        // Ids sort as strings: "r1" < "r10" < "r2".
        m.insert("id".into(), json!(format!("r{i}")));
        if i % 9 != 4 {
            m.insert("level".into(), levels[i % levels.len()].clone());
        }
        if i % 7 != 6 {
            m.insert("guild".into(), guilds[i % guilds.len()].clone());
        }
        m.insert("name".into(), json!(names[i % names.len()]));
        m.insert("score".into(), json!((i as f64) * 1.5 - 20.0));
        let tags = match i % 5 {
            0 => json!(["pvp", "tank"]),
            1 => json!(["pve"]),
            2 => json!([]),
            3 => json!("pvp"),
            _ => json!([1, "1", null, ["nested"]]),
        };
        m.insert("tags".into(), tags);
        let stats = match i % 4 {
            0 => json!({ "hp": i, "mp": 10 - (i as i64) }),
            1 => json!({ "hp": (i as f64) / 3.0 }),
            2 => json!(5),
            _ => json!({ "deep": { "x": i % 3 } }),
        };
        if i % 11 != 10 {
            m.insert("stats".into(), stats);
        }
        m.insert("flag".into(), json!(i % 3 == 0));
        out.push(Value::Object(m));
    }
    out
}

/// The indexes of the fixed table: every kind, on flat, nested and list fields.
pub fn indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::eq("guild"),
        IndexSpec::eq("tags"),
        IndexSpec::eq("flag"),
        IndexSpec::ordered("level"),
        IndexSpec::ordered("score"),
        IndexSpec::ordered("stats.hp"),
        IndexSpec::ordered("name"),
        IndexSpec::text("name"),
        IndexSpec::substring("name"),
        IndexSpec::substring("guild"),
    ]
}

/// The fixed table (versions 1..).
pub fn table() -> Table<JsonRecord> {
    let mut t = Table::new(indexes());
    t.apply(records().into_iter().enumerate().map(|(i, v)| {
        let r = JsonRecord::from_value(v).expect("a fixture is a record");
        (r.id().clone(), Some(Entry::new(r, i as u64 + 1)))
    }));
    t
}

/// Runs `q` with the indexes and by plain scan and panics if they disagree (ids in order,
/// page info, errors). Follows the page's cursor once, checking the next page too.
pub fn check_query(table: &Table<JsonRecord>, q: &Query) {
    let mut q = q.clone();
    for _ in 0..2 {
        let Ok(c) = q.compile() else { return };
        let indexed = table.query(&c);
        let scanned = table.scan(&c);
        let _ = table.explain(&c);
        let info = match (indexed, scanned) {
            (Ok(a), Ok(b)) => {
                let ia: Vec<&String> = a.items.iter().map(|e| e.record.id()).collect();
                let ib: Vec<&String> = b.items.iter().map(|e| e.record.id()).collect();
                assert_eq!(ia, ib, "indexed and scanned ids differ for {}", json_of(&q));
                assert_eq!(a.page_info, b.page_info, "indexed and scanned page info differ for {}", json_of(&q));
                a.page_info
            }
            (Err(_), Err(_)) => return,
            (a, b) => panic!(
                "indexed {:?} and scanned {:?} disagree on failing for {}",
                a.map(|p| p.items.len()),
                b.map(|p| p.items.len()),
                json_of(&q)
            ),
        };
        // Continue from the page's cursor (a valid token the fuzzer would rarely make).
        let next = match &q.page {
            Some(Page::Cursor { limit, before: Some(_), .. }) => {
                info.cursor.map(|t| Page::Cursor { limit: *limit, after: None, before: Some(t) })
            }
            Some(Page::Cursor { limit, .. }) => {
                info.cursor.map(|t| Page::Cursor { limit: *limit, after: Some(t), before: None })
            }
            _ => None,
        };
        match next {
            Some(p) => q.page = Some(p),
            None => return,
        }
    }
}

fn json_of(q: &Query) -> String {
    serde_json::to_string(q).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// A current record for `id`, independent of the table.
pub fn fixed_current(id: &str) -> Stored {
    let mut value = match json!({
        "id": id, "gold": 5, "hp": 1.5, "name": "Alice", "tags": ["a", "b"],
        "stats": { "hp": 3, "list": [1, 2] }, "nothing": null, "flag": true
    }) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    value.insert("id".into(), json!(id));
    Stored { value, version: 3 }
}

/// Checks what the protocol promises of an applied entry.
fn check_applied(e: &WireWriteEntry, cur: Option<&Stored>, applied: &atoma::protocol::Applied) {
    assert!(!applied.id.is_empty(), "an applied entry has an empty id: {e:?}");
    if let Some(next) = &applied.next {
        assert_eq!(next.version, cur.map_or(0, |c| c.version) + 1, "the new version is not current + 1: {e:?}");
        assert_eq!(
            next.value.get("id"),
            Some(&Value::String(applied.id.clone())),
            "the stored record's id is not the entry's id: {e:?}"
        );
    }
}

/// Applies each entry as the server does: against the fixed current record, against none,
/// and against the table's record (then writing the result into the table).
pub fn apply_entries(table: &mut Table<JsonRecord>, entries: &[WireWriteEntry]) {
    for (n, e) in entries.iter().enumerate() {
        let target = entry_target(e);
        let fixed = fixed_current(target.as_deref().filter(|t| !t.is_empty()).unwrap_or("r0"));
        for cur in [Some(&fixed), None] {
            if let Ok(a) = apply_entry(e, cur, || format!("fresh{n}")) {
                check_applied(e, cur, &a);
            }
        }
        let cur = target
            .as_ref()
            .and_then(|id| table.entry(id))
            .map(|en| Stored { value: en.record.body().clone(), version: en.version });
        let Ok(applied) = apply_entry(e, cur.as_ref(), || format!("fresh{n}")) else { continue };
        check_applied(e, cur.as_ref(), &applied);
        if !known_issues() && applied.next.as_ref().is_some_and(|n| n.value.values().any(has_negative_zero)) {
            continue;
        }
        let entry = match applied.next {
            Some(next) => match JsonRecord::new(next.value) {
                Ok(r) => Some(Entry::new(r, next.version)),
                Err(_) => continue,
            },
            None => None,
        };
        let deleted = entry.is_none();
        table.apply([(applied.id.clone(), entry)]);
        match table.get(&applied.id) {
            Some(r) => assert_eq!(r.id(), &applied.id, "the table holds another id under {:?}", applied.id),
            None => assert!(deleted, "a written record {:?} is not in the table", applied.id),
        }
    }
}
