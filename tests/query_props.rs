//! Property tests of the query engine: for random records and random queries, the indexed
//! result equals a plain scan (same ids, same order, same pages), also after random changes;
//! walking cursor pages forward and backward visits every match exactly once.

use atoma::core::{Entry, Filter, IndexSpec, JsonRecord, Page, Query, Sort, Table, field};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

const GUILDS: &[&str] = &["red", "blue", "green", "gold", "Red"];
const WORDS: &[&str] = &["dragon", "dragons", "slayer", "mage", "fire", "ice", "frost", "drago", "rogue"];

fn record() -> impl Strategy<Value = Json> {
    (
        0u32..60,
        prop_oneof![Just(Json::Null), (0i64..12).prop_map(Json::from), Just(json!("x"))],
        prop_oneof![(-50i32..50).prop_map(|x| json!(f64::from(x) / 4.0)), Just(Json::Null)],
        proptest::sample::select(GUILDS),
        proptest::collection::vec(proptest::sample::select(WORDS), 0..4),
        proptest::collection::vec(proptest::sample::select(&["pvp", "pve", "raid"][..]), 0..3),
        any::<bool>(),
        0i64..5,
    )
        .prop_map(|(id, level, score, guild, words, tags, has_level, hp)| {
            let mut o = serde_json::Map::new();
            o.insert("id".into(), json!(format!("r{id:02}")));
            if has_level {
                o.insert("level".into(), level);
            }
            o.insert("score".into(), score);
            o.insert("guild".into(), json!(guild));
            o.insert("name".into(), json!(words.join(" ")));
            o.insert("tags".into(), json!(tags));
            o.insert("stats".into(), json!({"hp": hp}));
            Json::Object(o)
        })
}

fn leaf() -> impl Strategy<Value = Filter> {
    let fields = proptest::sample::select(&["level", "score", "guild", "name", "tags", "stats.hp", "nope"][..]);
    prop_oneof![
        (
            fields.clone(),
            prop_oneof![
                (0i64..12).prop_map(Json::from),
                proptest::sample::select(GUILDS).prop_map(Json::from),
                Just(Json::Null)
            ]
        )
            .prop_map(|(f, v)| field(f).eq(v)),
        (
            fields.clone(),
            proptest::collection::vec(
                prop_oneof![(0i64..12).prop_map(Json::from), proptest::sample::select(GUILDS).prop_map(Json::from)],
                0..3
            )
        )
            .prop_map(|(f, v)| field(f).is_in(v)),
        (fields.clone(), -12i32..12, 0u8..4).prop_map(|(f, v, op)| {
            let v = json!(f64::from(v) / 2.0);
            match op {
                0 => field(f).gt(v),
                1 => field(f).gte(v),
                2 => field(f).lt(v),
                _ => field(f).lte(v),
            }
        }),
        (
            fields.clone(),
            proptest::sample::select(&["gr", "g", "re", "red", "drag", "on", "ire", "mage f"][..]),
            0u8..3
        )
            .prop_map(|(f, s, op)| match op {
                0 => field(f).starts_with(s),
                1 => field(f).ends_with(s),
                _ => field(f).contains(s),
            }),
        fields.clone().prop_map(|f| field(f).is_null()),
        fields.clone().prop_map(|f| field(f).exists()),
        (fields, proptest::sample::select(WORDS), 0u8..3, any::<bool>())
            .prop_map(|(f, w, d, fuzzy)| { if fuzzy { field(f).fuzzy(w, d) } else { field(f).matches(w) } }),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|args| Filter::And { args }),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|args| Filter::Or { args }),
            inner.prop_map(Filter::not),
        ]
    })
}

fn sorts() -> impl Strategy<Value = Vec<Sort>> {
    proptest::collection::vec(
        (proptest::sample::select(&["level", "score", "guild", "name", "stats.hp", "nope"][..]), any::<bool>())
            .prop_map(|(f, desc)| Sort {
                field: f.into(),
                dir: if desc { atoma::core::Dir::Desc } else { atoma::core::Dir::Asc },
            }),
        0..3,
    )
}

/// Tables over `records` in the given order; sorted by id (as sequential ids arrive), slot
/// order is id order and the planner takes its id-ordered paths.
fn table_sorted(records: &[Json], by_id: bool) -> (Table<JsonRecord>, Table<JsonRecord>) {
    let mut records = records.to_vec();
    if by_id {
        records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    table(&records)
}

fn table(records: &[Json]) -> (Table<JsonRecord>, Table<JsonRecord>) {
    let indexed = Table::new([
        IndexSpec::eq("guild"),
        IndexSpec::eq("level"),
        IndexSpec::eq("tags"),
        IndexSpec::ordered("level"),
        IndexSpec::ordered("score"),
        IndexSpec::ordered("guild"),
        IndexSpec::ordered("stats.hp"),
        IndexSpec::text("name"),
        IndexSpec::substring("name"),
        IndexSpec::substring("guild"),
    ]);
    let mut plain = Table::new([]);
    let mut indexed = indexed;
    let changes: Vec<_> = records
        .iter()
        .map(|r| {
            let r = JsonRecord::from_value(r.clone()).expect("valid record");
            (r.id().clone(), Some(Entry::new(r, 1)))
        })
        .collect();
    indexed.apply(changes.clone());
    plain.apply(changes);
    (indexed, plain)
}

use atoma::core::Keyed;

fn ids<'a>(page: impl Iterator<Item = &'a JsonRecord>) -> Vec<String> {
    page.map(|r| r.id().clone()).collect()
}

fn check_same(t: &Table<JsonRecord>, q: &Query) -> Result<(), TestCaseError> {
    let c = q.compile().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let a = t.query(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let b = t.scan(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (_, ex) = t.query_explained(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(ids(a.records()), ids(b.records()), "query {:?} explain {:?}", serde_json::to_string(q), ex);
    prop_assert_eq!(&a.page_info, &b.page_info, "query {:?} explain {:?}", serde_json::to_string(q), ex);
    Ok(())
}

/// Every ordered index walks to exactly the records that have the field.
fn check_ordered_walks(t: &Table<JsonRecord>) -> Result<(), TestCaseError> {
    for field in ["level", "score", "guild", "stats.hp"] {
        let all = Query {
            filter: None,
            sort: vec![Sort { field: field.into(), dir: Default::default() }],
            page: Some(Page::Offset { limit: Some(7), offset: None, include_total: Some(true) }),
        };
        check_same(t, &all)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500), ..ProptestConfig::default() })]

    #[test]
    fn indexed_equals_scan(
        records in proptest::collection::vec(record(), 0..50),
        updates in proptest::collection::vec((record(), any::<bool>()), 0..20),
        f in proptest::option::of(filter()),
        sort in sorts(),
        limit in proptest::option::of(0u32..8),
        offset in proptest::option::of(0u32..6),
        total in any::<bool>(),
        by_id in any::<bool>(),
    ) {
        let (mut t, _) = table_sorted(&records, by_id);
        let q = Query { filter: f, sort, page: Some(Page::Offset { limit, offset, include_total: Some(total) }) };
        check_same(&t, &q)?;
        // Incremental maintenance: change and delete records, then compare again.
        let changes: Vec<_> = updates.into_iter().map(|(r, delete)| {
            let r = JsonRecord::from_value(r).expect("valid record");
            (r.id().clone(), (!delete).then(|| Entry::new(r, 2)))
        }).collect();
        t.apply(changes);
        check_same(&t, &q)?;
        let unpaged = Query { page: None, ..q.clone() };
        check_same(&t, &unpaged)?;
    }

    /// A commit of 64+ changes queues its ordered-index entries and applies them sorted; ids
    /// repeat within the commit and deleted slots are taken again.
    #[test]
    fn large_commits_keep_the_indexes_exact(
        records in proptest::collection::vec(record(), 0..60),
        updates in proptest::collection::vec((record(), any::<bool>()), 64..200),
        f in proptest::option::of(filter()),
        sort in sorts(),
        by_id in any::<bool>(),
    ) {
        let (mut t, _) = table_sorted(&records, by_id);
        let changes: Vec<_> = updates.into_iter().map(|(r, delete)| {
            let r = JsonRecord::from_value(r).expect("valid record");
            (r.id().clone(), (!delete).then(|| Entry::new(r, 2)))
        }).collect();
        t.apply(changes);
        let q = Query { filter: f, sort, page: None };
        check_same(&t, &q)?;
        check_ordered_walks(&t)?;
    }

    /// A commit of distinct records large enough to update its indexes in parallel (in test
    /// builds: 16+): inserts, replacements and deletes, each index on its own thread.
    #[test]
    fn parallel_index_updates_keep_the_indexes_exact(
        records in proptest::collection::vec(record(), 0..60),
        updates in proptest::collection::vec((record(), any::<bool>()), 16..120),
        f in proptest::option::of(filter()),
        sort in sorts(),
        by_id in any::<bool>(),
    ) {
        let (mut t, _) = table_sorted(&records, by_id);
        // One change per record (the last one given).
        let mut by: std::collections::BTreeMap<String, (JsonRecord, bool)> = std::collections::BTreeMap::new();
        for (r, delete) in updates {
            let r = JsonRecord::from_value(r).expect("valid record");
            by.insert(r.id().clone(), (r, delete));
        }
        let changes: Vec<_> = by.into_values().map(|(r, delete)| (r.id().clone(), (!delete).then(|| Entry::new(r, 2)))).collect();
        let mut old = Vec::new();
        let n = t.apply_keeping(changes.clone(), &mut old);
        let existed = changes.iter().filter(|(id, _)| old.iter().any(|e| e.record.id() == id)).count();
        prop_assert_eq!(old.len(), existed, "each replaced or deleted record comes back once");
        prop_assert_eq!(n, changes.iter().filter(|(id, next)| next.is_some() || old.iter().any(|e| e.record.id() == id)).count());
        let q = Query { filter: f, sort, page: None };
        check_same(&t, &q)?;
        check_ordered_walks(&t)?;
        // Deleted records are gone, the others hold their new state.
        for (id, next) in &changes {
            prop_assert_eq!(t.get(id).map(|r| r.id().clone()), next.as_ref().map(|e| e.record.id().clone()));
        }
    }

    #[test]
    fn cursor_pages_visit_every_match_once(
        records in proptest::collection::vec(record(), 0..50),
        f in proptest::option::of(filter()),
        sort in sorts(),
        limit in 1u32..6,
        by_id in any::<bool>(),
    ) {
        let (t, plain) = table_sorted(&records, by_id);
        let all = Query { filter: f.clone(), sort: sort.clone(), page: None };
        let expect = ids(plain.scan(&all.compile().expect("valid")).expect("runs").records());

        for backward in [false, true] {
            let mut seen: Vec<String> = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..=expect.len() + 1 {
                let page = if backward {
                    Page::Cursor { limit: Some(limit), after: None, before: Some(token.clone().unwrap_or_default()) }
                } else {
                    Page::Cursor { limit: Some(limit), after: token.clone(), before: None }
                };
                let q = Query { filter: f.clone(), sort: sort.clone(), page: Some(page) };
                check_same(&t, &q)?;
                let p = t.query(&q.compile().expect("valid")).expect("runs");
                let mut got = ids(p.records());
                if backward {
                    got.extend(seen);
                    seen = got;
                } else {
                    seen.extend(got);
                }
                token = p.page_info.cursor.clone();
                if p.page_info.has_next != Some(true) {
                    break;
                }
            }
            prop_assert_eq!(&seen, &expect, "backward={}", backward);
        }
    }

    #[test]
    fn cursor_pages_are_stable_under_changes_elsewhere(
        records in proptest::collection::vec(record(), 4..40),
        inserted in proptest::collection::vec(record(), 1..10),
        limit in 1u32..5,
    ) {
        let (mut t, _) = table(&records);
        let q = Query::all().sort_desc("score").limit(limit).after(None);
        let first = t.query(&q.compile().expect("valid")).expect("runs");
        let last_seen = first.records().last().cloned();
        let token = first.page_info.cursor.clone();
        let Some(last) = last_seen else { return Ok(()) };
        // Insert and delete records other than the page's last one.
        let changes: Vec<_> = inserted.into_iter().filter_map(|r| {
            let r = JsonRecord::from_value(r).expect("valid record");
            (r.id() != last.id()).then(|| (r.id().clone(), Some(Entry::new(r, 3))))
        }).collect();
        t.apply(changes);
        let next = Query::all().sort_desc("score").limit(limit).after(token);
        let page = t.query(&next.compile().expect("valid")).expect("runs");
        let full = Query::all().sort_desc("score");
        let all = ids(t.scan(&full.compile().expect("valid")).expect("runs").records());
        let at = all.iter().position(|id| id == last.id()).expect("last record still there");
        let want: Vec<String> = all[at + 1..].iter().take(limit as usize).cloned().collect();
        prop_assert_eq!(ids(page.records()), want);
    }
}

#[test]
fn explain_names_the_indexes_used() {
    let recs: Vec<Json> = (0..200)
        .map(|i| json!({"id": format!("r{i:03}"), "guild": GUILDS[i % 5], "level": i % 10, "name": WORDS[i % 9], "score": i}))
        .collect();
    let (t, _) = table(&recs);
    let q = Query::filter(field("guild").eq("red").and(field("level").gte(5))).compile().expect("valid");
    let ex = t.explain(&q).expect("runs");
    assert!(matches!(ex.access, atoma::core::Access::Candidates { exact: true, .. }), "{ex:?}");
    let used: Vec<_> = ex.used.iter().map(|u| (u.field.as_str(), u.op)).collect();
    assert!(used.contains(&("guild", "eq")), "{used:?}");
    let q = Query::filter(field("name").contains("rago")).compile().expect("valid");
    let ex = t.explain(&q).expect("runs");
    assert!(ex.recheck && matches!(ex.access, atoma::core::Access::Candidates { exact: false, .. }), "{ex:?}");
    let q = Query::filter(Filter::Exists { field: "guild".into() }).compile().expect("valid");
    assert_eq!(t.explain(&q).expect("runs").access, atoma::core::Access::Scan);
    let q = Query::all().sort_desc("score").limit(5).compile().expect("valid");
    assert!(matches!(t.explain(&q).expect("runs").access, atoma::core::Access::Walk { .. }));
}
