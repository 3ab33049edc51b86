//! The durable outbox of the `sync` route, in the same redb file as the local records (so a
//! frame's records and outbox items commit in one transaction).
//!
//! Items are kept in write order (a sequence number). Per record only the oldest item is ever
//! in flight, so one record's stuck write never blocks the others, and a record's writes reach
//! the server in order. Pending full-value updates of one record are compacted; an ack rebases
//! the record's later items on the new version; a reject or a write that keeps failing goes to
//! the dead letters, which the game can inspect, retry or drop.

use std::collections::{HashMap, HashSet};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::core::WriteAction;
use crate::protocol::{Current, StandardError, WireWriteEntry, entry_target};

const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("sync/outbox");
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("sync/outbox-keys");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("sync/dead-letters");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sync/meta");
const DEFERRED: TableDefinition<&str, &[u8]> = TableDefinition::new("sync/deferred");
const OWN: TableDefinition<&str, (u64, u64)> = TableDefinition::new("sync/own-versions");

/// Where an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ItemState {
    /// Waiting to be pushed.
    Pending,
    /// Pushed at this time (ms), not yet answered.
    InFlight {
        /// When it was reserved.
        since_ms: i64,
    },
}

/// One queued write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxItem {
    /// Its place in write order.
    pub seq: u64,
    /// The store.
    pub resource: String,
    /// The record.
    pub entity_id: String,
    /// The write, as it will go on the wire.
    pub entry: WireWriteEntry,
    /// Pending or in flight.
    pub state: ItemState,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time (ms).
    pub next_attempt_ms: i64,
    /// When the game made the write (ms).
    pub created_ms: i64,
    /// Whether it was ever reserved for a push: the server may have applied it (an answer
    /// lost to a crash or a timeout), so a retry must send exactly what the first push sent
    /// (its idempotency key replays the first result) and nothing may be compacted into it.
    #[serde(default)]
    pub sent: bool,
}

/// A write that will not go through by itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The write.
    pub item: OutboxItem,
    /// Why it stopped.
    pub error: StandardError,
    /// The server's copy, when it rejected the write with a conflict.
    pub current: Option<Current>,
}

/// How an item's push ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Applied: the server's version (absent after a delete).
    Acked {
        /// The new version.
        version: Option<u64>,
    },
    /// Refused for good (a conflict, a validation error, no access).
    Rejected {
        /// Why.
        error: StandardError,
        /// The server's copy on a conflict.
        current: Option<Current>,
    },
    /// Failed for now (network, 5xx): try again after `retry_at_ms`.
    Retry {
        /// Why.
        error: StandardError,
        /// When to try again.
        retry_at_ms: i64,
    },
}

/// Counts for status displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Waiting.
    pub pending: usize,
    /// Pushed, not answered.
    pub in_flight: usize,
    /// Dead letters.
    pub dead: usize,
    /// The highest sequence number handed out so far.
    pub last_seq: u64,
}

fn storage(e: impl std::fmt::Display) -> StandardError {
    StandardError::adapter("STORAGE", format!("outbox: {e}")).retryable()
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StandardError> {
    serde_json::to_vec(v).map_err(|e| StandardError::internal(format!("outbox encoding: {e}")))
}

fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StandardError> {
    serde_json::from_slice(b).map_err(|e| StandardError::adapter("CORRUPT_OUTBOX", format!("outbox item: {e}")))
}

/// Queues write entries inside the caller's transaction (the frame's). Entries whose
/// idempotency key is queued already are skipped. Returns the sequence numbers used.
pub fn enqueue(
    txn: &WriteTransaction,
    resource: &str,
    entries: &[WireWriteEntry],
    now_ms: i64,
) -> Result<Vec<u64>, StandardError> {
    let mut items = txn.open_table(ITEMS).map_err(storage)?;
    let mut keys = txn.open_table(KEYS).map_err(storage)?;
    let mut meta = txn.open_table(META).map_err(storage)?;
    let mut seq = match meta.get("next-seq").map_err(storage)? {
        Some(v) => u64::from_le_bytes(
            v.value().try_into().map_err(|_| StandardError::adapter("CORRUPT_OUTBOX", "bad sequence"))?,
        ),
        None => 1,
    };
    let mut used = Vec::with_capacity(entries.len());
    for e in entries {
        let key = format!("{resource}\u{0}{}", e.item.meta.idempotency_key);
        if keys.get(key.as_str()).map_err(storage)?.is_some() {
            continue;
        }
        let Some(entity_id) = entry_target(e) else {
            return Err(StandardError::invalid_write("a sync write needs its record's id"));
        };
        let item = OutboxItem {
            seq,
            resource: resource.to_owned(),
            entity_id,
            entry: e.clone(),
            state: ItemState::Pending,
            attempts: 0,
            next_attempt_ms: 0,
            created_ms: now_ms,
            sent: false,
        };
        items.insert(seq, enc(&item)?.as_slice()).map_err(storage)?;
        keys.insert(key.as_str(), seq).map_err(storage)?;
        used.push(seq);
        seq += 1;
    }
    meta.insert("next-seq", seq.to_le_bytes().as_slice()).map_err(storage)?;
    Ok(used)
}

fn all_items(txn: &WriteTransaction) -> Result<Vec<OutboxItem>, StandardError> {
    items_of(&txn.open_table(ITEMS).map_err(storage)?)
}

fn items_of(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<OutboxItem>, StandardError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        out.push(dec::<OutboxItem>(v.value())?);
    }
    Ok(out)
}

fn put(txn: &WriteTransaction, item: &OutboxItem) -> Result<(), StandardError> {
    let mut items = txn.open_table(ITEMS).map_err(storage)?;
    items.insert(item.seq, enc(item)?.as_slice()).map_err(storage)?;
    Ok(())
}

fn remove(txn: &WriteTransaction, item: &OutboxItem) -> Result<(), StandardError> {
    let mut items = txn.open_table(ITEMS).map_err(storage)?;
    items.remove(item.seq).map_err(storage)?;
    let mut keys = txn.open_table(KEYS).map_err(storage)?;
    keys.remove(format!("{}\u{0}{}", item.resource, item.entry.item.meta.idempotency_key).as_str()).map_err(storage)?;
    Ok(())
}

/// A patch of commutative ops sent without a base version: it never needs one.
fn commutative(e: &WireWriteEntry) -> bool {
    e.action == WriteAction::Patch
        && e.item.base_version.is_none()
        && e.item.ops.as_ref().is_some_and(|ops| ops.iter().all(|o| o.is_commutative()))
}

/// A full-value write (its value is the whole record), which a later one can replace.
fn full_value(e: &WireWriteEntry) -> bool {
    let merge = e.options.as_ref().and_then(|o| o.merge) == Some(true);
    matches!(e.action, WriteAction::Update | WriteAction::Upsert) && !merge
}

/// Reserves up to `max` items to push: per record only its oldest item, and only when it is
/// not in flight or waiting out a backoff. A record's later full-value updates are compacted
/// into the oldest first (one write instead of many).
pub fn reserve(db: &Database, max: usize, now_ms: i64) -> Result<Vec<OutboxItem>, StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut out = Vec::new();
    {
        let items = all_items(&txn)?;
        let mut by_record: HashMap<(String, String), Vec<OutboxItem>> = HashMap::new();
        let mut order: Vec<(String, String)> = Vec::new();
        for it in items {
            let k = (it.resource.clone(), it.entity_id.clone());
            by_record.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                Vec::new()
            });
            if let Some(v) = by_record.get_mut(&k) {
                v.push(it);
            }
        }
        // Oldest records first (by their first item's sequence).
        for k in order {
            if out.len() >= max {
                break;
            }
            let Some(list) = by_record.get_mut(&k) else { continue };
            let Some(first) = list.first() else { continue };
            if matches!(first.state, ItemState::InFlight { .. }) || first.next_attempt_ms > now_ms {
                continue;
            }
            let mut head = list.remove(0);
            // Compact: later full-value updates of the record replace the head's value — only
            // while the head was never sent (a re-sent head replays its first result under
            // its idempotency key, and a value compacted into it would be lost).
            if !head.sent && (full_value(&head.entry) || head.entry.action == WriteAction::Create) {
                while let Some(next) = list.first() {
                    if !full_value(&next.entry) {
                        break;
                    }
                    let next = list.remove(0);
                    head.entry.item.value = next.entry.item.value.clone();
                    remove(&txn, &next)?;
                }
            }
            head.state = ItemState::InFlight { since_ms: now_ms };
            head.sent = true;
            put(&txn, &head)?;
            out.push(head);
        }
    }
    txn.commit().map_err(storage)?;
    Ok(out)
}

/// Records how pushed items ended: acked items leave (their record's later items are rebased
/// on the new version), rejected ones become dead letters, failed ones wait for a retry — or
/// become dead letters after `max_attempts`.
pub fn settle(db: &Database, outcomes: &[(u64, Outcome)], max_attempts: u32) -> Result<(), StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    settle_in(&txn, outcomes, max_attempts)?;
    txn.commit().map_err(storage)?;
    Ok(())
}

/// [`settle`] inside the caller's transaction (with the local writebacks of the acks).
pub fn settle_in(txn: &WriteTransaction, outcomes: &[(u64, Outcome)], max_attempts: u32) -> Result<(), StandardError> {
    {
        let items = all_items(txn)?;
        let by_seq: HashMap<u64, &OutboxItem> = items.iter().map(|i| (i.seq, i)).collect();
        let mut rebases: Vec<(String, String, u64)> = Vec::new();
        let mut dead = txn.open_table(DEAD).map_err(storage)?;
        for (seq, outcome) in outcomes {
            let Some(item) = by_seq.get(seq) else { continue };
            match outcome {
                Outcome::Acked { version } => {
                    remove(txn, item)?;
                    if let Some(v) = version {
                        rebases.push((item.resource.clone(), item.entity_id.clone(), *v));
                    }
                }
                Outcome::Rejected { error, current } => {
                    remove(txn, item)?;
                    let letter = DeadLetter { item: (*item).clone(), error: error.clone(), current: current.clone() };
                    dead.insert(*seq, enc(&letter)?.as_slice()).map_err(storage)?;
                }
                Outcome::Retry { error, retry_at_ms } => {
                    let mut it = (*item).clone();
                    it.attempts += 1;
                    if it.attempts >= max_attempts {
                        remove(txn, item)?;
                        let letter = DeadLetter { item: it, error: error.clone(), current: None };
                        dead.insert(*seq, enc(&letter)?.as_slice()).map_err(storage)?;
                    } else {
                        it.state = ItemState::Pending;
                        it.next_attempt_ms = *retry_at_ms;
                        put(txn, &it)?;
                    }
                }
            }
        }
        // Later writes of an acked record are based on the version the server gave it.
        let acked: HashSet<u64> =
            outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Acked { .. })).map(|(s, _)| *s).collect();
        for (resource, entity, version) in rebases {
            for it in
                items.iter().filter(|i| i.resource == resource && i.entity_id == entity && !acked.contains(&i.seq))
            {
                if it.entry.action == WriteAction::Create || commutative(&it.entry) {
                    continue;
                }
                let mut it = it.clone();
                it.entry.item.base_version = Some(version);
                put(txn, &it)?;
            }
        }
    }
    Ok(())
}

/// The records with items in the outbox, as (resource, id): their local values must not be
/// overwritten by pulled changes until those items are pushed.
pub fn pending_records(txn: &WriteTransaction) -> Result<HashSet<(String, String)>, StandardError> {
    Ok(all_items(txn)?.into_iter().map(|i| (i.resource, i.entity_id)).collect())
}

/// Returns in-flight items reserved before `older_than_ms` to pending (all of them at start:
/// pass `i64::MAX`). Returns how many.
pub fn recover(db: &Database, older_than_ms: i64) -> Result<usize, StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut n = 0;
    for mut it in all_items(&txn)? {
        if let ItemState::InFlight { since_ms } = it.state
            && since_ms < older_than_ms
        {
            it.state = ItemState::Pending;
            // (An item written before `sent` existed was in flight: it was sent.)
            it.sent = true;
            put(&txn, &it)?;
            n += 1;
        }
    }
    txn.commit().map_err(storage)?;
    Ok(n)
}

/// The dead letters, oldest first.
pub fn dead_letters(db: &Database) -> Result<Vec<DeadLetter>, StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(DEAD) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        out.push(dec(v.value())?);
    }
    Ok(out)
}

/// Puts a dead letter back in the outbox (as pending, attempts reset), or drops it.
pub fn resolve_dead(db: &Database, seq: u64, retry: bool) -> Result<bool, StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    let found = {
        let mut dead = txn.open_table(DEAD).map_err(storage)?;
        let letter: Option<DeadLetter> = match dead.remove(seq).map_err(storage)? {
            Some(v) => Some(dec(v.value())?),
            None => None,
        };
        if let (Some(l), true) = (&letter, retry) {
            let mut it = l.item.clone();
            it.state = ItemState::Pending;
            it.attempts = 0;
            it.next_attempt_ms = 0;
            put(&txn, &it)?;
            let mut keys = txn.open_table(KEYS).map_err(storage)?;
            keys.insert(format!("{}\u{0}{}", it.resource, it.entry.item.meta.idempotency_key).as_str(), it.seq)
                .map_err(storage)?;
        }
        letter.is_some()
    };
    txn.commit().map_err(storage)?;
    Ok(found)
}

/// Counts (a read transaction: it never waits for the writer).
pub fn stats(db: &Database) -> Result<OutboxStats, StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    let items = match txn.open_table(ITEMS) {
        Ok(t) => items_of(&t)?,
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(storage(e)),
    };
    let dead = match txn.open_table(DEAD) {
        Ok(t) => t.len().map_err(storage)? as usize,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(storage(e)),
    };
    let last_seq = match txn.open_table(META) {
        Ok(t) => t
            .get("next-seq")
            .map_err(storage)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(1, u64::from_le_bytes),
        Err(redb::TableError::TableDoesNotExist(_)) => 1,
        Err(e) => return Err(storage(e)),
    }
    .saturating_sub(1);
    let in_flight = items.iter().filter(|i| matches!(i.state, ItemState::InFlight { .. })).count();
    Ok(OutboxStats { pending: items.len() - in_flight, in_flight, dead, last_seq })
}

/// The lowest sequence number still in the outbox (`None`: empty) — for barriers.
pub fn oldest_seq(db: &Database) -> Result<Option<u64>, StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(ITEMS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    Ok(table.first().map_err(storage)?.map(|(k, _)| k.value()))
}

/// Reads a sync cursor (`"0"` when none).
pub fn cursor(db: &Database, name: &str) -> Result<String, StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok("0".into()),
        Err(e) => return Err(storage(e)),
    };
    Ok(table
        .get(format!("cursor/{name}").as_str())
        .map_err(storage)?
        .map_or_else(|| "0".into(), |v| String::from_utf8_lossy(v.value()).into_owned()))
}

/// Stores a sync cursor inside the caller's transaction (with the pulled records).
pub fn set_cursor(txn: &WriteTransaction, name: &str, cursor: &str) -> Result<(), StandardError> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    meta.insert(format!("cursor/{name}").as_str(), cursor.as_bytes()).map_err(storage)?;
    Ok(())
}

/// A pulled change of a record that had writes in the outbox: the pull moved on without it
/// (the local value was kept), so it is applied once the record's writes are settled —
/// unless the server answered one of them with something newer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deferred {
    /// The record's version after the change.
    pub version: u64,
    /// The record, or `None` when deleted.
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
}

fn deferred_key(resource: &str, id: &str) -> String {
    format!("{resource}\u{0}{id}")
}

/// Keeps a pulled change of a record with writes in the outbox, inside the caller's
/// transaction (the pull's). Pulls come in change-log order: the newest change replaces an
/// older one.
pub fn defer(txn: &WriteTransaction, resource: &str, id: &str, change: &Deferred) -> Result<(), StandardError> {
    let mut table = txn.open_table(DEFERRED).map_err(storage)?;
    table.insert(deferred_key(resource, id).as_str(), enc(change)?.as_slice()).map_err(storage)?;
    Ok(())
}

/// Takes (removes) the deferred change of a record, inside the caller's transaction.
pub fn take_deferred(txn: &WriteTransaction, resource: &str, id: &str) -> Result<Option<Deferred>, StandardError> {
    let mut table = txn.open_table(DEFERRED).map_err(storage)?;
    let taken = table.remove(deferred_key(resource, id).as_str()).map_err(storage)?;
    taken.map(|v| dec(v.value())).transpose()
}

/// Notes, inside the caller's transaction (the ack's), that the server gave a write of this
/// client version `version` of a record, now the local copy's version. Versions `from + 1 ..=
/// version` are this client's own while the acks follow each other.
pub fn note_own_version(txn: &WriteTransaction, resource: &str, id: &str, version: u64) -> Result<(), StandardError> {
    let mut table = txn.open_table(OWN).map_err(storage)?;
    let key = deferred_key(resource, id);
    let from = match table.get(key.as_str()).map_err(storage)?.map(|v| v.value()) {
        Some((from, to)) if to + 1 == version => from,
        _ => version.saturating_sub(1),
    };
    table.insert(key.as_str(), (from, version)).map_err(storage)?;
    Ok(())
}

/// Forgets a record's own versions (the local copy took a version from someone else).
pub fn forget_own_versions(txn: &WriteTransaction, resource: &str, id: &str) -> Result<(), StandardError> {
    let mut table = txn.open_table(OWN).map_err(storage)?;
    table.remove(deferred_key(resource, id).as_str()).map_err(storage)?;
    Ok(())
}

/// `(from, to)`: the local copy of a record is at version `to`, and versions `from + 1 ..= to`
/// came from this client's own acked writes.
pub fn own_versions(txn: &WriteTransaction, resource: &str, id: &str) -> Result<Option<(u64, u64)>, StandardError> {
    let table = txn.open_table(OWN).map_err(storage)?;
    let found = table.get(deferred_key(resource, id).as_str()).map_err(storage)?.map(|v| v.value());
    Ok(found)
}

/// Gives a new write of a record the local copy's version as its base when the write's base
/// is older only by this client's own acked writes: the game made it before their acks
/// reached its store (they settled after the store's frame began), and the outbox had nothing
/// left to rebase. A base older than a version from someone else stays (a real conflict).
pub fn rebase_on_own_versions(
    txn: &WriteTransaction,
    resource: &str,
    entry: &mut WireWriteEntry,
) -> Result<(), StandardError> {
    if entry.action == WriteAction::Create || commutative(entry) {
        return Ok(());
    }
    let Some(id) = entry_target(entry) else { return Ok(()) };
    let base = entry.item.base_version.unwrap_or(0);
    if let Some((from, to)) = own_versions(txn, resource, &id)?
        && from <= base
        && base < to
    {
        entry.item.base_version = Some(to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
