//! The outbox against a plain scan of its items: indexes, counts, the old layout.

use super::*;
use crate::protocol::{ItemMeta, WriteItem};

fn db(name: &str) -> Database {
    let p = std::env::temp_dir().join(format!("atoma-outbox-{name}-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&p);
    Database::create(&p).expect("db")
}

fn entry(action: WriteAction, id: &str, key: &str, value: serde_json::Value, base: Option<u64>) -> WireWriteEntry {
    WireWriteEntry {
        entry_id: key.into(),
        action,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: base,
            value: Some(value),
            ops: None,
            meta: ItemMeta { idempotency_key: key.into(), client_time_ms: 1 },
        },
        options: None,
    }
}

fn put_all(db: &Database, entries: &[WireWriteEntry]) -> Vec<u64> {
    let txn = db.begin_write().expect("txn");
    let seqs = enqueue(&txn, "players", entries, 0).expect("enqueue");
    txn.commit().expect("commit");
    seqs
}

#[test]
fn enqueue_dedupes_by_idempotency_key() {
    let db = db("dedupe");
    let e = entry(WriteAction::Create, "a", "k1", serde_json::json!({"n": 1}), None);
    assert_eq!(put_all(&db, &[e.clone(), e.clone()]), [1]);
    assert_eq!(put_all(&db, &[e]), Vec::<u64>::new());
    assert_eq!(stats(&db).expect("stats").pending, 1);
}

#[test]
fn one_in_flight_per_record_compaction_and_rebase() {
    let db = db("order");
    put_all(
        &db,
        &[
            entry(WriteAction::Update, "a", "k1", serde_json::json!({"n": 1}), Some(3)),
            entry(WriteAction::Update, "a", "k2", serde_json::json!({"n": 2}), Some(3)),
            entry(WriteAction::Create, "b", "k3", serde_json::json!({"n": 1}), None),
            entry(WriteAction::Delete, "a", "k4", serde_json::json!({}), Some(3)),
        ],
    );
    let got = reserve(&db, 10, 100).expect("reserve");
    // a's two updates are one write carrying the later value; b is independent; a's
    // delete waits behind a's update.
    assert_eq!(got.iter().map(|i| (i.entity_id.as_str(), i.seq)).collect::<Vec<_>>(), [("a", 1), ("b", 3)]);
    assert_eq!(got[0].entry.item.value, Some(serde_json::json!({"n": 2})));
    assert!(reserve(&db, 10, 100).expect("reserve").is_empty(), "nothing else is eligible while they fly");
    settle(&db, &[(1, Outcome::Acked { version: Some(4) }), (3, Outcome::Acked { version: Some(1) })], 5)
        .expect("settle");
    let next = reserve(&db, 10, 200).expect("reserve");
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].seq, next[0].entry.item.base_version), (4, Some(4)), "rebased on the acked version");
}

#[test]
fn rejects_and_stuck_writes_become_dead_letters_without_blocking_others() {
    let db = db("dead");
    put_all(
        &db,
        &[
            entry(WriteAction::Update, "a", "k1", serde_json::json!({}), Some(1)),
            entry(WriteAction::Update, "b", "k2", serde_json::json!({}), Some(1)),
        ],
    );
    let got = reserve(&db, 10, 0).expect("reserve");
    assert_eq!(got.len(), 2);
    let conflict = StandardError::conflict("stale");
    let retry = StandardError::adapter("NETWORK", "down").retryable();
    settle(
        &db,
        &[
            (1, Outcome::Rejected { error: conflict.clone(), current: None }),
            (2, Outcome::Retry { error: retry.clone(), retry_at_ms: 50 }),
        ],
        2,
    )
    .expect("settle");
    assert_eq!(dead_letters(&db).expect("dead").len(), 1);
    assert!(reserve(&db, 10, 10).expect("reserve").is_empty(), "b waits out its backoff");
    let again = reserve(&db, 10, 60).expect("reserve");
    assert_eq!(again.len(), 1);
    settle(&db, &[(2, Outcome::Retry { error: retry, retry_at_ms: 70 })], 2).expect("settle");
    let dead = dead_letters(&db).expect("dead");
    assert_eq!(dead.len(), 2, "b failed twice: stuck");
    assert_eq!(stats(&db).expect("stats").pending, 0);
    assert!(resolve_dead(&db, 2, true).expect("retry"));
    assert!(resolve_dead(&db, 1, false).expect("drop"));
    assert_eq!(stats(&db).expect("stats"), OutboxStats { pending: 1, in_flight: 0, dead: 0, last_seq: 2 });
}

#[test]
fn nothing_is_compacted_into_an_item_that_was_sent() {
    // The create went out and the answer was lost (a crash): after recovery it is sent
    // again as it was (the server replays its first result under its idempotency key),
    // and the later update follows as its own write instead of vanishing into it.
    let db = db("sent");
    put_all(&db, &[entry(WriteAction::Create, "a", "k1", serde_json::json!({"n": 1}), None)]);
    assert_eq!(reserve(&db, 10, 100).expect("reserve").len(), 1);
    put_all(&db, &[entry(WriteAction::Upsert, "a", "k2", serde_json::json!({"n": 2}), None)]);
    assert_eq!(recover(&db, i64::MAX).expect("recover"), 1);
    let again = reserve(&db, 10, 200).expect("reserve");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].seq, again[0].entry.item.value.clone()), (1, Some(serde_json::json!({"n": 1}))));
    settle(&db, &[(1, Outcome::Acked { version: Some(1) })], 5).expect("settle");
    let next = reserve(&db, 10, 300).expect("reserve");
    assert_eq!(next.len(), 1, "the update was kept");
    assert_eq!((next[0].seq, next[0].entry.item.value.clone()), (2, Some(serde_json::json!({"n": 2}))));
    // A never-sent head still takes later full values.
    put_all(
        &db,
        &[
            entry(WriteAction::Create, "b", "k3", serde_json::json!({"n": 1}), None),
            entry(WriteAction::Upsert, "b", "k4", serde_json::json!({"n": 3}), None),
        ],
    );
    let b = reserve(&db, 10, 400).expect("reserve");
    assert_eq!((b[0].seq, b[0].entry.item.value.clone()), (3, Some(serde_json::json!({"n": 3}))));
}

#[test]
fn in_flight_items_recover() {
    let db = db("recover");
    put_all(&db, &[entry(WriteAction::Update, "a", "k1", serde_json::json!({}), Some(1))]);
    assert_eq!(reserve(&db, 10, 1000).expect("reserve").len(), 1);
    assert_eq!(recover(&db, 500).expect("recover"), 0, "not timed out yet");
    assert_eq!(recover(&db, i64::MAX).expect("recover"), 1);
    assert_eq!(reserve(&db, 10, 1000).expect("reserve").len(), 1);
}

/// A database in memory (no fsync per commit).
fn mem_db() -> Database {
    Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).expect("db")
}

/// [`mem_db`] with an empty outbox (its tables created).
fn outbox_db() -> Database {
    let db = mem_db();
    put_all(&db, &[]);
    db
}

/// Checks every index and count against a plain read of the whole outbox.
fn check_indexes(db: &Database) {
    use std::collections::{BTreeMap, BTreeSet};
    // The counts hold before the items of the last writes are indexed, too.
    let before = stats(db).expect("stats");
    let txn = db.begin_write().expect("txn");
    catch_up(&txn).expect("catch up");
    txn.commit().expect("commit");
    assert_eq!(stats(db).expect("stats"), before, "indexing changes no count");
    let items = items(db).expect("items");
    let txn = db.begin_read().expect("read");
    let by_record: BTreeSet<(String, String, u64)> = txn
        .open_table(BY_RECORD)
        .expect("by record")
        .iter()
        .expect("iter")
        .map(|r| split_record_row(r.expect("row").0.value()).expect("a record row"))
        .collect();
    let expected: BTreeSet<_> = items.iter().map(|i| (i.resource.clone(), i.entity_id.clone(), i.seq)).collect();
    assert_eq!(by_record, expected, "by-record index");
    let mut heads: BTreeMap<(String, String), &OutboxItem> = BTreeMap::new();
    for i in &items {
        heads.entry((i.resource.clone(), i.entity_id.clone())).or_insert(i);
    }
    let ready: BTreeSet<u64> =
        txn.open_table(READY).expect("ready").iter().expect("iter").map(|r| r.expect("row").0.value()).collect();
    let waiting: Vec<(i64, u64)> =
        txn.open_table(WAITING).expect("waiting").iter().expect("iter").map(|r| r.expect("row").0.value()).collect();
    for (at, seq) in &waiting {
        let it = items.iter().find(|i| i.seq == *seq).expect("a waiting item exists");
        assert_eq!(it.next_attempt_ms, *at, "waiting under its backoff");
        assert!(!ready.contains(seq), "ready or waiting, not both");
    }
    let placed: BTreeSet<u64> = ready.iter().copied().chain(waiting.iter().map(|(_, s)| *s)).collect();
    let pending_heads: BTreeSet<u64> =
        heads.values().filter(|i| i.state == ItemState::Pending).map(|i| i.seq).collect();
    assert_eq!(placed, pending_heads, "ready + waiting = the pending heads");
    let in_flight: BTreeMap<u64, i64> = txn
        .open_table(IN_FLIGHT)
        .expect("in flight")
        .iter()
        .expect("iter")
        .map(|r| r.map(|(k, v)| (k.value(), v.value())).expect("row"))
        .collect();
    let expected: BTreeMap<u64, i64> = items
        .iter()
        .filter_map(|i| match i.state {
            ItemState::InFlight { since_ms } => Some((i.seq, since_ms)),
            ItemState::Pending => None,
        })
        .collect();
    assert_eq!(in_flight, expected, "in-flight index");
    let keys: BTreeMap<String, u64> = txn
        .open_table(KEYS)
        .expect("keys")
        .iter()
        .expect("iter")
        .map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value())).expect("row"))
        .collect();
    // Every queued key names an item with that key, and every item's key is queued (a dead
    // letter retried after a newer write reused its key goes under a key of its own).
    let key_of = |i: &OutboxItem| format!("{}\u{0}{}", i.resource, i.entry.item.meta.idempotency_key);
    let expected_keys: BTreeMap<String, u64> = items.iter().map(|i| (key_of(i), i.seq)).collect();
    assert_eq!(keys, expected_keys, "one key row per queued item");
    let letters = dead_letters(db).expect("dead");
    let dead = letters.len();
    let last_seq = items.iter().map(|i| i.seq).chain(letters.iter().map(|d| d.item.seq));
    let stats = stats(db).expect("stats");
    assert_eq!(
        (stats.pending, stats.in_flight, stats.dead),
        (items.len() - expected_in_flight(&items), expected_in_flight(&items), dead),
        "counts"
    );
    assert!(last_seq.max().unwrap_or(0) <= stats.last_seq);
}

fn expected_in_flight(items: &[OutboxItem]) -> usize {
    items.iter().filter(|i| matches!(i.state, ItemState::InFlight { .. })).count()
}

/// What the outbox did before its indexes (reading every item): the items `reserve`
/// takes, with the values compacted into them.
fn reference_reserve(items: &[OutboxItem], max: usize, now: i64) -> Vec<(u64, Option<serde_json::Value>)> {
    let mut order: Vec<(String, String)> = Vec::new();
    for i in items {
        let k = (i.resource.clone(), i.entity_id.clone());
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let mut out = Vec::new();
    for (r, id) in order {
        if out.len() >= max {
            break;
        }
        let list: Vec<&OutboxItem> = items.iter().filter(|i| i.resource == r && i.entity_id == id).collect();
        let head = list[0];
        if head.state != ItemState::Pending || head.next_attempt_ms > now {
            continue;
        }
        let mut value = head.entry.item.value.clone();
        if !head.sent && (full_value(&head.entry) || head.entry.action == WriteAction::Create) {
            for next in &list[1..] {
                if !full_value(&next.entry) {
                    break;
                }
                value = next.entry.item.value.clone();
            }
        }
        out.push((head.seq, value));
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Write { record: u8, action: u8, key: u8 },
    Reserve { max: usize },
    Settle { outcomes: Vec<u8> },
    Recover { all: bool },
    Resolve { pick: usize, retry: bool },
    Tick,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..4, 0u8..5, 0u8..40).prop_map(|(record, action, key)| Op::Write { record, action, key }),
        2 => (1usize..4).prop_map(|max| Op::Reserve { max }),
        2 => proptest::collection::vec(0u8..6, 0..4).prop_map(|outcomes| Op::Settle { outcomes }),
        1 => any::<bool>().prop_map(|all| Op::Recover { all }),
        1 => (0usize..4, any::<bool>()).prop_map(|(pick, retry)| Op::Resolve { pick, retry }),
        1 => Just(Op::Tick),
    ]
}

fn run_ops(ops: &[Op]) {
    let db = outbox_db();
    let mut now = 10;
    let mut flying: Vec<u64> = Vec::new();
    for op in ops {
        match op {
            Op::Write { record, action, key } => {
                let id = format!("r{record}");
                let k = format!("k{key}");
                let value = serde_json::json!({ "n": key });
                let e = match action {
                    0 => entry(WriteAction::Create, &id, &k, value, None),
                    1 => entry(WriteAction::Update, &id, &k, value, Some(1)),
                    2 => entry(WriteAction::Upsert, &id, &k, value, None),
                    3 => entry(WriteAction::Delete, &id, &k, value, Some(1)),
                    _ => WireWriteEntry {
                        action: WriteAction::Patch,
                        item: WriteItem {
                            value: None,
                            ops: Some(vec![crate::core::PatchOp::inc("n", 1)]),
                            ..entry(WriteAction::Patch, &id, &k, value, None).item
                        },
                        ..entry(WriteAction::Patch, &id, &k, serde_json::json!({}), None)
                    },
                };
                let txn = db.begin_write().expect("txn");
                enqueue(&txn, "players", &[e], now).expect("enqueue");
                txn.commit().expect("commit");
            }
            Op::Reserve { max } => {
                let expected = reference_reserve(&items(&db).expect("items"), *max, now);
                let got = reserve(&db, *max, now).expect("reserve");
                let got: Vec<_> = got.into_iter().map(|i| (i.seq, i.entry.item.value)).collect();
                assert_eq!(got, expected, "reserve takes what a full scan would");
                flying.extend(got.iter().map(|(s, _)| *s));
            }
            Op::Settle { outcomes } => {
                let outcomes: Vec<(u64, Outcome)> = flying
                    .drain(..)
                    .zip(outcomes.iter().chain(std::iter::repeat(&0)))
                    .map(|(seq, o)| {
                        let outcome = match o {
                            0 | 1 => Outcome::Acked { version: Some(u64::from(*o) + 2) },
                            2 => Outcome::Acked { version: None },
                            3 => Outcome::Rejected { error: StandardError::conflict("no"), current: None },
                            _ => Outcome::Retry {
                                error: StandardError::adapter("NETWORK", "down").retryable(),
                                retry_at_ms: now + i64::from(*o) - 3,
                            },
                        };
                        (seq, outcome)
                    })
                    .collect();
                settle(&db, &outcomes, 3).expect("settle");
            }
            Op::Recover { all } => {
                recover(&db, if *all { i64::MAX } else { now }).expect("recover");
                flying.clear();
            }
            Op::Resolve { pick, retry } => {
                let dead = dead_letters(&db).expect("dead");
                if let Some(d) = dead.get(*pick % dead.len().max(1)) {
                    assert!(resolve_dead(&db, d.item.seq, *retry).expect("resolve"));
                }
            }
            Op::Tick => now += 1,
        }
        check_indexes(&db);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
    #[test]
    fn indexes_and_counts_match_a_full_scan(ops in proptest::collection::vec(op(), 1..60)) {
        run_ops(&ops);
    }
}

#[test]
fn counts_stay_exact_through_every_transition() {
    let db = outbox_db();
    let st = |db: &Database| {
        let s = stats(db).expect("stats");
        (s.pending, s.in_flight, s.dead, s.last_seq)
    };
    put_all(
        &db,
        &[
            entry(WriteAction::Create, "a", "k1", serde_json::json!({"n": 1}), None),
            entry(WriteAction::Upsert, "a", "k2", serde_json::json!({"n": 2}), None),
            entry(WriteAction::Update, "b", "k3", serde_json::json!({}), Some(1)),
            entry(WriteAction::Update, "c", "k4", serde_json::json!({}), Some(1)),
        ],
    );
    assert_eq!(st(&db), (4, 0, 0, 4));
    // a's upsert is compacted into its create: one item fewer.
    assert_eq!(reserve(&db, 10, 5).expect("reserve").len(), 3);
    assert_eq!(st(&db), (0, 3, 0, 4));
    let retry = |at| Outcome::Retry { error: StandardError::adapter("NETWORK", "down").retryable(), retry_at_ms: at };
    settle(
        &db,
        &[
            (1, Outcome::Acked { version: Some(1) }),
            (3, Outcome::Rejected { error: StandardError::conflict("stale"), current: None }),
            (4, retry(20)),
        ],
        2,
    )
    .expect("settle");
    assert_eq!(st(&db), (1, 0, 1, 4));
    assert!(reserve(&db, 10, 10).expect("reserve").is_empty(), "c waits out its backoff");
    assert_eq!(reserve(&db, 10, 20).expect("reserve").len(), 1);
    assert_eq!(st(&db), (0, 1, 1, 4));
    assert_eq!(recover(&db, i64::MAX).expect("recover"), 1);
    assert_eq!(st(&db), (1, 0, 1, 4));
    assert_eq!(reserve(&db, 10, 30).expect("reserve").len(), 1);
    settle(&db, &[(4, retry(40))], 2).expect("settle");
    assert_eq!(st(&db), (0, 0, 2, 4), "c failed twice: a dead letter");
    assert!(resolve_dead(&db, 4, true).expect("retry"));
    assert_eq!(st(&db), (1, 0, 1, 4));
    assert!(resolve_dead(&db, 3, false).expect("drop"));
    assert!(!resolve_dead(&db, 3, false).expect("gone"));
    assert_eq!(st(&db), (1, 0, 0, 4));
    check_indexes(&db);
}

#[test]
fn a_letter_whose_key_a_newer_write_reused_is_retried_under_a_key_of_its_own() {
    let db = mem_db();
    put_all(&db, &[entry(WriteAction::Create, "a", "k1", serde_json::json!({"n": 1}), None)]);
    assert_eq!(reserve(&db, 10, 0).expect("reserve").len(), 1);
    settle(&db, &[(1, Outcome::Rejected { error: StandardError::conflict("taken"), current: None })], 5)
        .expect("settle");
    // The key left the queue with the letter; a new write (another record) uses it again.
    put_all(&db, &[entry(WriteAction::Create, "b", "k1", serde_json::json!({"n": 2}), None)]);
    assert!(resolve_dead(&db, 1, true).expect("retry"));
    check_indexes(&db);
    let mut keys: Vec<(String, String)> =
        items(&db).expect("items").into_iter().map(|i| (i.entity_id, i.entry.item.meta.idempotency_key)).collect();
    keys.sort();
    assert_eq!(keys, [("a".to_owned(), "k1#retry-1-1".to_owned()), ("b".to_owned(), "k1".to_owned())]);
    // Each settles on its own: acking one leaves the other's key queued.
    let got = reserve(&db, 10, 0).expect("reserve");
    assert_eq!(got.len(), 2);
    settle(&db, &[(2, Outcome::Acked { version: Some(1) })], 5).expect("settle");
    check_indexes(&db);
    assert_eq!(items(&db).expect("items").len(), 1);
}

#[test]
fn an_older_letter_retried_becomes_its_records_head_again() {
    let db = mem_db();
    put_all(&db, &[entry(WriteAction::Update, "a", "k1", serde_json::json!({"n": 1}), Some(1))]);
    assert_eq!(reserve(&db, 10, 0).expect("reserve").len(), 1);
    settle(&db, &[(1, Outcome::Rejected { error: StandardError::conflict("stale"), current: None })], 5)
        .expect("settle");
    put_all(&db, &[entry(WriteAction::Patch, "a", "k2", serde_json::json!({"n": 2}), Some(1))]);
    assert!(resolve_dead(&db, 1, true).expect("retry"));
    check_indexes(&db);
    let got = reserve(&db, 10, 0).expect("reserve");
    assert_eq!(got.iter().map(|i| i.seq).collect::<Vec<_>>(), [1], "the older write goes first");
    check_indexes(&db);
}

#[test]
fn an_outbox_written_before_the_indexes_is_indexed_on_first_write() {
    // The layout of files written before the indexes: items as the JSON of `OutboxItem`,
    // keys and the next sequence number, nothing else.
    let db = mem_db();
    let old = |seq: u64, id: &str, key: &str, action: WriteAction, state: ItemState| OutboxItem {
        seq,
        resource: "players".into(),
        entity_id: id.into(),
        entry: entry(action, id, key, serde_json::json!({ "seq": seq }), None),
        state,
        attempts: 0,
        next_attempt_ms: 0,
        created_ms: 1,
        sent: matches!(state, ItemState::InFlight { .. }),
    };
    let old_items = [
        old(1, "a", "k1", WriteAction::Create, ItemState::InFlight { since_ms: 5 }),
        old(2, "b", "k2", WriteAction::Create, ItemState::Pending),
        old(3, "b", "k3", WriteAction::Upsert, ItemState::Pending),
        old(4, "a", "k4", WriteAction::Upsert, ItemState::Pending),
    ];
    {
        let txn = db.begin_write().expect("txn");
        {
            let mut items = txn.open_table(ITEMS).expect("items");
            let mut keys = txn.open_table(KEYS).expect("keys");
            for it in &old_items {
                items.insert(it.seq, serde_json::to_vec(it).expect("json").as_slice()).expect("insert");
                keys.insert(format!("players\u{0}{}", it.entry.item.meta.idempotency_key).as_str(), it.seq)
                    .expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert("next-seq", 5u64.to_le_bytes().as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    // Read-only: counted by reading, nothing written.
    assert_eq!(stats(&db).expect("stats"), OutboxStats { pending: 3, in_flight: 1, dead: 0, last_seq: 4 });
    // The first write builds the indexes; a duplicate key of an old item is still one.
    put_all(
        &db,
        &[
            entry(WriteAction::Upsert, "b", "k3", serde_json::json!({}), None),
            entry(WriteAction::Create, "c", "k5", serde_json::json!({"n": 5}), None),
        ],
    );
    check_indexes(&db);
    assert_eq!(stats(&db).expect("stats"), OutboxStats { pending: 4, in_flight: 1, dead: 0, last_seq: 5 });
    // Then it works as any: b's upsert compacts into its create; a is in flight.
    let got = reserve(&db, 10, 10).expect("reserve");
    assert_eq!(
        got.iter().map(|i| (i.seq, i.entry.item.value.clone())).collect::<Vec<_>>(),
        [(2, Some(serde_json::json!({"seq": 3}))), (5, Some(serde_json::json!({"n": 5})))]
    );
    assert_eq!(recover(&db, i64::MAX).expect("recover"), 3);
    let again = reserve(&db, 10, 10).expect("reserve");
    assert_eq!(again.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2, 5], "a's create is sent again as it was");
    assert_eq!(again[0].entry.item.value, Some(serde_json::json!({"seq": 1})), "nothing compacted into it");
    settle(&db, &again.iter().map(|i| (i.seq, Outcome::Acked { version: Some(1) })).collect::<Vec<_>>(), 5)
        .expect("settle");
    assert_eq!(reserve(&db, 10, 10).expect("reserve").iter().map(|i| i.seq).collect::<Vec<_>>(), [4]);
    check_indexes(&db);
}

#[test]
fn a_damaged_item_is_a_clear_error() {
    let db = mem_db();
    put_all(&db, &[entry(WriteAction::Create, "a", "k1", serde_json::json!({"n": 1}), None)]);
    let txn = db.begin_write().expect("txn");
    txn.open_table(ITEMS).expect("items").insert(1, [2u8, 0, 1].as_slice()).expect("insert");
    txn.commit().expect("commit");
    let e = reserve(&db, 10, 0).expect_err("damaged");
    assert_eq!(e.code, "CORRUPT_OUTBOX");
    assert!(e.message.contains("outbox item 1"), "{e:?}");
}

#[test]
fn deferred_changes_keep_the_newest() {
    let db = db("deferred");
    let txn = db.begin_write().expect("txn");
    let v = |n: i64| serde_json::json!({ "n": n }).as_object().cloned();
    defer(&txn, "players", "a", &Deferred { version: 2, value: v(2) }).expect("defer");
    defer(&txn, "players", "a", &Deferred { version: 3, value: None }).expect("defer");
    assert_eq!(take_deferred(&txn, "players", "a").expect("take"), Some(Deferred { version: 3, value: None }));
    assert_eq!(take_deferred(&txn, "players", "a").expect("take"), None, "taken once");
    txn.commit().expect("commit");
}

#[test]
fn a_base_older_only_by_own_acks_is_rebased() {
    let db = db("own");
    let txn = db.begin_write().expect("txn");
    // Acks of this client gave versions 2 and 3 (applied on 1 and 2).
    note_own_version(&txn, "players", "a", 2).expect("note");
    note_own_version(&txn, "players", "a", 3).expect("note");
    assert_eq!(own_versions(&txn, "players", "a").expect("own"), Some((1, 3)));
    let rebased = |base: Option<u64>, action: WriteAction| {
        let mut e = entry(action, "a", "k", serde_json::json!({}), base);
        rebase_on_own_versions(&txn, "players", &mut e).expect("rebase");
        e.item.base_version
    };
    assert_eq!(rebased(Some(1), WriteAction::Update), Some(3), "older by own versions only");
    assert_eq!(rebased(Some(2), WriteAction::Delete), Some(3));
    assert_eq!(rebased(Some(3), WriteAction::Update), Some(3), "current");
    assert_eq!(rebased(None, WriteAction::Create), None, "a create has no base");
    // A version from someone else in between: the write stays a conflict.
    note_own_version(&txn, "players", "a", 5).expect("note");
    assert_eq!(own_versions(&txn, "players", "a").expect("own"), Some((4, 5)));
    assert_eq!(rebased(Some(3), WriteAction::Update), Some(3));
    forget_own_versions(&txn, "players", "a").expect("forget");
    assert_eq!(rebased(Some(4), WriteAction::Update), Some(4));
    txn.commit().expect("commit");
}
