//! The write reducer: per-op semantics, all-settled results, write entries, and the
//! properties that inverse patches restore the exact previous state and hydrate never
//! overwrites.

use atoma::Record;
use atoma::core::{
    Entry, IndexSpec, Op, OpMeta, PatchOp, Query, Table, UpdateWith, UpsertMode, Versions, WriteAction, WriteError,
    field, reduce,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "players")]
struct Player {
    id: u32,
    name: String,
    level: i64,
    #[serde(default)]
    gold: i64,
    #[serde(default)]
    tags: Vec<String>,
}

fn p(id: u32, name: &str, level: i64) -> Player {
    Player { id, name: name.into(), level, gold: 0, tags: vec![] }
}

fn meta(key: &str) -> OpMeta {
    OpMeta { idempotency_key: key.into(), client_time_ms: 1_760_000_000_000, ..OpMeta::default() }
}

fn table(players: &[(Player, u64)]) -> Table<Player> {
    let mut t = Table::new([IndexSpec::eq("name"), IndexSpec::ordered("level")]);
    t.apply(players.iter().map(|(p, v)| (p.id, Some(Entry::new(p.clone(), *v)))));
    t
}

fn snapshot(t: &Table<Player>) -> Vec<(Player, u64)> {
    let mut v: Vec<_> = t.iter().map(|e| (Player::clone(&e.record), e.version)).collect();
    v.sort_by_key(|(p, _)| p.id);
    v
}

#[test]
fn a_frame_of_writes_is_one_plan_with_all_settled_results() {
    let t = table(&[(p(1, "ann", 3), 4), (p(2, "bob", 5), 1)]);
    let ops = vec![
        (Op::Create(p(3, "cy", 1)), meta("k1")),
        (Op::Create(p(1, "dup", 1)), meta("k2")),
        (
            Op::Update {
                id: 2,
                base_version: None,
                with: UpdateWith::Closure(Box::new(|p: &mut Player| p.level += 10)),
            },
            meta("k3"),
        ),
        (Op::Update { id: 9, base_version: None, with: UpdateWith::Replace(p(9, "x", 0)) }, meta("k4")),
        (Op::Update { id: 1, base_version: Some(3), with: UpdateWith::Replace(p(1, "ann", 9)) }, meta("k5")),
        (Op::Delete { id: 2, base_version: Some(1) }, meta("k6")),
    ];
    let plan = reduce(&t, ops, Versions::Client, None);
    assert!(plan.results[0].is_ok());
    assert_eq!(plan.results[1], Err(WriteError::Duplicate(1)));
    assert!(plan.results[2].is_ok());
    assert_eq!(plan.results[3], Err(WriteError::NotFound(9)));
    match &plan.results[4] {
        Err(WriteError::Conflict { id: 1, base: Some(3), current: Some(c) }) => {
            assert_eq!((c.record.level, c.version), (3, 4));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(plan.results[5].is_ok());
    // Entries carry base versions, idempotency keys and client times.
    let actions: Vec<_> =
        plan.entries.iter().map(|e| (e.action, e.id, e.base_version, e.meta.idempotency_key.as_str())).collect();
    assert_eq!(
        actions,
        [
            (WriteAction::Create, 3, None, "k1"),
            (WriteAction::Update, 2, Some(1), "k3"),
            (WriteAction::Delete, 2, Some(1), "k6")
        ]
    );
    assert_eq!(plan.entries[1].value.as_ref().map(|p| p.level), Some(15));
    // Two records changed: 3 created, 2 updated then deleted — one change each.
    let mut changed: Vec<_> = plan.changes.iter().map(|(id, e)| (*id, e.is_some())).collect();
    changed.sort();
    assert_eq!(changed, [(2, false), (3, true)]);
    assert_eq!(plan.segments.len(), 1);
}

#[test]
fn hydrate_and_write_are_one_change_and_hydrate_is_never_persisted() {
    let t = table(&[(p(1, "ann", 3), 2)]);
    let ops = vec![
        (Op::Hydrate(vec![Entry::new(p(5, "eve", 7), 3), Entry::new(p(1, "stale", 0), 1)]), meta("h")),
        (
            Op::Update { id: 5, base_version: None, with: UpdateWith::Closure(Box::new(|p: &mut Player| p.gold = 50)) },
            meta("u"),
        ),
    ];
    let plan = reduce(&t, ops, Versions::Client, None);
    assert_eq!(plan.entries.len(), 1, "only the update is persisted");
    assert_eq!(plan.entries[0].base_version, Some(3), "the hydrated version is the base");
    assert_eq!(plan.changes.len(), 1, "the hydrate of 5 and the update of 5 are one change; 1 is untouched");
    let mut t = t;
    t.apply(plan.changes);
    assert_eq!(t.get(&1).map(|p| p.name.as_str()), Some("ann"), "hydrate never overwrites");
    assert_eq!(t.entry(&5).map(|e| (e.record.gold, e.version)), Some((50, 3)));
}

#[test]
fn merge_patch_upsert_and_validation() {
    let t = table(&[(p(1, "ann", 3), 2)]);
    let merge = serde_json::json!({"level": 4}).as_object().cloned().expect("object");
    let no_negative =
        |p: &Player| if p.gold < 0 { Err(format!("gold of {} may not go below zero", p.id)) } else { Ok(()) };
    let ops = vec![
        (Op::Update { id: 1, base_version: Some(2), with: UpdateWith::Merge(merge) }, meta("m")),
        (
            Op::Patch {
                id: 1,
                base_version: None,
                ops: vec![PatchOp::inc("gold", 5), PatchOp::add_to_set("tags", "pvp")],
            },
            meta("p"),
        ),
        (Op::Patch { id: 1, base_version: None, ops: vec![PatchOp::inc("gold", -50)] }, meta("neg")),
        (Op::Patch { id: 1, base_version: None, ops: vec![PatchOp::set("level", "high")] }, meta("type")),
        (
            Op::Upsert { record: p(1, "ann2", 1), merge: false, mode: UpsertMode::Strict, base_version: Some(1) },
            meta("s"),
        ),
        (Op::Upsert { record: p(2, "new", 1), merge: false, mode: UpsertMode::Strict, base_version: None }, meta("n")),
        (Op::Upsert { record: p(1, "ann3", 8), merge: true, mode: UpsertMode::Loose, base_version: None }, meta("l")),
    ];
    let plan = reduce(&t, ops, Versions::Client, Some(&no_negative));
    assert!(plan.results[0].is_ok() && plan.results[1].is_ok());
    assert_eq!(plan.results[2], Err(WriteError::Invalid("gold of 1 may not go below zero".into())));
    assert!(
        matches!(&plan.results[3], Err(WriteError::Invalid(m)) if m.contains("invalid type")),
        "{:?}",
        plan.results[3]
    );
    assert!(matches!(plan.results[4], Err(WriteError::Conflict { .. })));
    assert!(plan.results[5].is_ok() && plan.results[6].is_ok());
    let mut t = t;
    t.apply(plan.changes);
    let one = t.get(&1).expect("present");
    // A typed record serializes every field, so a merge upsert sets them all.
    assert_eq!((one.name.as_str(), one.level, one.gold, one.tags.len()), ("ann3", 8, 0, 0));
    let patched = plan.entries[1].value.as_ref().expect("patch value");
    assert_eq!((patched.level, patched.gold, patched.tags.as_slice()), (4, 5, &["pvp".to_string()][..]));
    assert_eq!(plan.entries[1].patch.len(), 2, "patch entries carry their ops");
    // The index saw the commit.
    let q = Query::filter(field("name").eq("new")).compile().expect("valid");
    assert_eq!(t.query(&q).expect("runs").items.len(), 1);
}

#[test]
fn server_versions_bump_and_demand_a_base() {
    let t = table(&[(p(1, "ann", 3), 2)]);
    let ops = vec![
        (Op::Update { id: 1, base_version: None, with: UpdateWith::Replace(p(1, "a", 1)) }, meta("a")),
        (Op::Update { id: 1, base_version: Some(2), with: UpdateWith::Replace(p(1, "b", 1)) }, meta("b")),
        (Op::Patch { id: 1, base_version: None, ops: vec![PatchOp::inc("gold", 1)] }, meta("c")),
        (Op::Create(p(4, "d", 1)), meta("d")),
    ];
    let plan = reduce(&t, ops, Versions::Server, None);
    assert!(matches!(plan.results[0], Err(WriteError::Conflict { base: None, .. })));
    assert_eq!(plan.results[1].as_ref().map(|a| a.version), Ok(Some(3)));
    assert_eq!(plan.results[2].as_ref().map(|a| a.version), Ok(Some(4)), "commutative patch needs no base");
    assert_eq!(plan.results[3].as_ref().map(|a| a.version), Ok(Some(1)));
}

#[test]
fn writebacks_and_remote_changes() {
    let t = table(&[(p(1, "ann", 3), 2), (p(2, "bob", 1), 9)]);
    let ops = vec![
        (Op::Writeback { id: 1, version: 3, record: None }, meta("w")),
        (Op::Remote { id: 2, version: 5, record: Some(p(2, "old", 0)) }, meta("r1")),
        (Op::Remote { id: 7, version: 1, record: Some(p(7, "new", 0)) }, meta("r2")),
        (Op::Remote { id: 8, version: 1, record: None }, meta("r3")),
    ];
    let plan = reduce(&t, ops, Versions::Client, None);
    assert!(plan.entries.is_empty(), "writebacks and remote changes are not persisted again");
    let mut t = t;
    t.apply(plan.changes);
    assert_eq!(t.entry(&1).map(|e| e.version), Some(3));
    assert_eq!(t.get(&2).map(|p| p.name.as_str()), Some("bob"), "a newer local copy wins over an older remote one");
    assert!(t.contains(&7) && !t.contains(&8));
}

#[derive(Clone, Debug)]
enum Gen {
    Hydrate(Vec<(u32, i64, u64)>),
    Create(u32, i64),
    Replace(u32, i64, Option<u64>),
    /// An update by closure: the new level, the base version, and whether it (wrongly)
    /// changes the id too.
    Closure(u32, i64, Option<u64>, bool),
    Inc(u32, i64),
    Delete(u32, Option<u64>),
    Upsert(u32, i64, bool, bool),
}

fn gen_op() -> impl Strategy<Value = Gen> {
    gen_op_over(12)
}

/// Ops on the ids below `ids`.
fn gen_op_over(ids: u32) -> impl Strategy<Value = Gen> {
    let id = 0u32..ids;
    prop_oneof![
        proptest::collection::vec((id.clone(), 0i64..9, 0u64..4), 0..4).prop_map(Gen::Hydrate),
        (id.clone(), 0i64..9).prop_map(|(i, l)| Gen::Create(i, l)),
        (id.clone(), 0i64..9, proptest::option::of(0u64..4)).prop_map(|(i, l, b)| Gen::Replace(i, l, b)),
        (id.clone(), 0i64..9, proptest::option::of(0u64..4), proptest::bool::weighted(0.05))
            .prop_map(|(i, l, b, moved)| Gen::Closure(i, l, b, moved)),
        (id.clone(), 0i64..9).prop_map(|(i, l)| Gen::Closure(i, l, None, false)),
        (id.clone(), -3i64..3).prop_map(|(i, n)| Gen::Inc(i, n)),
        (id.clone(), proptest::option::of(0u64..4)).prop_map(|(i, b)| Gen::Delete(i, b)),
        (id, 0i64..9, any::<bool>(), any::<bool>()).prop_map(|(i, l, m, s)| Gen::Upsert(i, l, m, s)),
    ]
}

fn to_op(g: Gen) -> Op<Player> {
    match g {
        Gen::Hydrate(v) => Op::Hydrate(v.into_iter().map(|(i, l, ver)| Entry::new(p(i, "h", l), ver)).collect()),
        Gen::Create(i, l) => Op::Create(p(i, "c", l)),
        Gen::Replace(i, l, b) => Op::Update { id: i, base_version: b, with: UpdateWith::Replace(p(i, "u", l)) },
        Gen::Closure(i, l, b, moved) => Op::Update {
            id: i,
            base_version: b,
            with: UpdateWith::Closure(Box::new(move |p: &mut Player| {
                p.level = l;
                p.name = "f".into();
                if moved {
                    p.id += 1000;
                }
            })),
        },
        Gen::Inc(i, n) => Op::Patch { id: i, base_version: None, ops: vec![PatchOp::inc("gold", n)] },
        Gen::Delete(i, b) => Op::Delete { id: i, base_version: b },
        Gen::Upsert(i, l, merge, strict) => Op::Upsert {
            record: p(i, "up", l),
            merge,
            mode: if strict { UpsertMode::Strict } else { UpsertMode::Loose },
            base_version: None,
        },
    }
}

fn initial() -> impl Strategy<Value = Vec<(Player, u64)>> {
    initial_over(12, 8)
}

/// Up to `n` records with ids below `ids`.
fn initial_over(ids: u32, n: usize) -> impl Strategy<Value = Vec<(Player, u64)>> {
    proptest::collection::btree_map(0u32..ids, (0i64..9, 0u64..4), 0..n)
        .prop_map(|m| m.into_iter().map(|(i, (l, v))| (p(i, "init", l), v)).collect())
}

/// Every index agrees with a scan: each name and level finds exactly the records that hold it.
fn indexes_agree(t: &Table<Player>) -> Result<(), TestCaseError> {
    for name in ["init", "h", "c", "u", "up", "f"] {
        let q = Query::filter(field("name").eq(name)).compile().expect("valid");
        let mut got: Vec<u32> = t.query(&q).expect("runs").records().map(|r| r.id).collect();
        got.sort_unstable();
        let mut want: Vec<u32> = t.iter().filter(|e| e.record.name == name).map(|e| e.record.id).collect();
        want.sort_unstable();
        prop_assert_eq!(got, want, "name {}", name);
    }
    for level in -1..10 {
        let q = Query::filter(field("level").gte(level).and(field("level").lt(level + 1))).compile().expect("valid");
        let mut got: Vec<u32> = t.query(&q).expect("runs").records().map(|r| r.id).collect();
        got.sort_unstable();
        let mut want: Vec<u32> = t.iter().filter(|e| e.record.level == level).map(|e| e.record.id).collect();
        want.sort_unstable();
        prop_assert_eq!(got, want, "level {}", level);
    }
    Ok(())
}

proptest! {
    #[test]
    fn inverse_patches_restore_the_exact_previous_state(
        init in initial(),
        gens in proptest::collection::vec(gen_op(), 0..16),
        server in any::<bool>(),
    ) {
        let mut t = table(&init);
        let before = snapshot(&t);
        let ops = gens.into_iter().enumerate().map(|(i, g)| (to_op(g), meta(&format!("k{i}")))).collect();
        let versions = if server { Versions::Server } else { Versions::Client };
        let plan = reduce(&t, ops, versions, None);
        let undo = plan.rollback(|_| true);
        t.apply(plan.changes);
        let plan2 = reduce(&t, undo.into_iter().map(|o| (o, meta("undo"))).collect(), Versions::Client, None);
        t.apply(plan2.changes);
        prop_assert_eq!(snapshot(&t), before);
        // The indexes followed: every record is found by its name and level.
        for e in t.iter() {
            let q = Query::filter(field("name").eq(e.record.name.clone()).and(field("level").eq(e.record.level))).compile().expect("valid");
            let page = t.query(&q).expect("runs");
            prop_assert!(page.records().any(|r| r.id == e.record.id));
        }
    }

    /// A plan's index hints (which indexes each change touches, found by the reducer) leave
    /// every index exact, on the sequential and the parallel commit path (debug builds take
    /// the parallel one from 16 distinct records).
    #[test]
    fn hinted_commits_keep_every_index_exact(
        init in initial_over(48, 40),
        gens in proptest::collection::vec(gen_op_over(48), 0..60),
    ) {
        let mut t = table(&init);
        let ops = gens.into_iter().enumerate().map(|(i, g)| (to_op(g), meta(&format!("k{i}")))).collect();
        let plan = reduce(&t, ops, Versions::Client, None);
        prop_assert_eq!(plan.changed_indexes.len(), plan.changes.len());
        let expected: Vec<_> = plan.changes.iter().map(|(id, e)| (*id, e.as_ref().map(|e| (Player::clone(&e.record), e.version)))).collect();
        t.apply_hinted(plan.changes.into_iter().zip(plan.changed_indexes), &mut Vec::new());
        for (id, want) in expected {
            prop_assert_eq!(t.entry(&id).map(|e| (Player::clone(&e.record), e.version)), want);
        }
        indexes_agree(&t)?;
    }

    #[test]
    fn hydrate_never_overwrites_and_never_persists(
        init in initial(),
        hydrated in proptest::collection::vec((0u32..12, 0i64..9, 0u64..4), 0..12),
    ) {
        let mut t = table(&init);
        let before = snapshot(&t);
        let op = Op::Hydrate(hydrated.iter().map(|(i, l, v)| Entry::new(p(*i, "h", *l), *v)).collect());
        let plan = reduce(&t, vec![(op, meta("h"))], Versions::Client, None);
        prop_assert!(plan.entries.is_empty());
        t.apply(plan.changes);
        for (rec, v) in &before {
            prop_assert_eq!(t.entry(&rec.id).map(|e| (&*e.record, e.version)), Some((rec, *v)));
        }
        for (i, _, _) in &hydrated {
            prop_assert!(t.contains(i));
        }
    }
}

proptest! {
    // More cases than the default: the ops that meet (a record changed twice, a hydrate after a
    // delete) are a small share of what the generator makes.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// One plan over a frame's ops leaves the table and the results exactly as reducing the
    /// ops one at a time does, on client and server versions (debug builds compute closure
    /// updates on a second thread from 16 ops holding at least 4 of them, in chunks of 4).
    #[test]
    fn one_plan_equals_one_op_at_a_time(
        init in initial_over(48, 40),
        gens in proptest::collection::vec(gen_op_over(48), 0..60),
        server in any::<bool>(),
    ) {
        let versions = if server { Versions::Server } else { Versions::Client };
        let ops = |gens: &[Gen]| -> Vec<_> {
            gens.iter().cloned().enumerate().map(|(i, g)| (to_op(g), meta(&format!("k{i}")))).collect()
        };
        let mut all = table(&init);
        let plan = reduce(&all, ops(&gens), versions, None);
        all.apply(plan.changes);
        let mut one = table(&init);
        let mut results = Vec::new();
        // Within a frame, a hydrate leaves alone a record an earlier op changed (deleted
        // included): one op at a time, it has to be told.
        let mut changed = std::collections::HashSet::new();
        for (op, m) in ops(&gens) {
            let op = match op {
                Op::Hydrate(v) => Op::Hydrate(v.into_iter().filter(|e| !changed.contains(&e.record.id)).collect()),
                op => op,
            };
            let plan = reduce(&one, vec![(op, m)], versions, None);
            changed.extend(plan.changes.iter().map(|(id, _)| *id));
            results.extend(plan.results);
            one.apply(plan.changes);
        }
        prop_assert_eq!(plan.results, results);
        prop_assert_eq!(snapshot(&all), snapshot(&one));
        indexes_agree(&all)?;
    }
}
