//! The durable outbox of the `sync` route, in the same redb file as the local records (so a
//! frame's records and outbox items commit in one transaction).
//!
//! Items are kept in write order (a sequence number). Per record only the oldest item is ever
//! in flight, so one record's stuck write never blocks the others, and a record's writes reach
//! the server in order. Pending full-value updates of one record are compacted; an ack rebases
//! the record's later items on the new version; a reject or a write that keeps failing goes to
//! the dead letters, which the game can inspect, retry or drop.
//!
//! Nothing here reads the whole outbox: indexes (by record, the pending heads, the items in
//! flight) let a write, a push and a settle touch only their own items, and the counts are
//! table lengths. A frame's transaction only appends items; the next transaction that reads
//! the indexes indexes them. A file written before the indexes gets them the same way, the
//! first time it is written.

use std::collections::HashSet;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::core::WriteAction;
use crate::protocol::{Current, StandardError, WireWriteEntry, entry_target};

mod codec;

/// The items, by sequence number ([`codec`]: format 2, or the JSON of older files).
const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("sync/outbox");
/// `resource \0 idempotency key` → sequence number: a repeated write is queued once.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("sync/outbox-keys");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("sync/dead-letters");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sync/meta");
const DEFERRED: TableDefinition<&str, &[u8]> = TableDefinition::new("sync/deferred");
const OWN: TableDefinition<&str, (u64, u64)> = TableDefinition::new("sync/own-versions");
/// Index: `len ‖ resource ‖ len ‖ id ‖ seq` (big-endian) → (): each record's items in order.
const BY_RECORD: TableDefinition<&[u8], ()> = TableDefinition::new("sync/outbox-by-record");
/// Index: the pending heads that may go now, by sequence number.
const READY: TableDefinition<u64, ()> = TableDefinition::new("sync/outbox-ready");
/// Index: the pending heads waiting out a backoff, by (when it ends, sequence number).
const WAITING: TableDefinition<(i64, u64), ()> = TableDefinition::new("sync/outbox-waiting");
/// Index: the items in flight → when they were reserved.
const IN_FLIGHT: TableDefinition<u64, i64> = TableDefinition::new("sync/outbox-in-flight");

/// The `sync/meta` row holding the highest sequence number the indexes cover. A frame's
/// transaction only appends items (and their idempotency keys); the next transaction that
/// reads the indexes — a push's reserve, a settle, a pull — indexes the items appended
/// since, once each. Files written before the indexes have no such row: everything is
/// indexed the first time.
const INDEXED_KEY: &str = "indexed-through";
/// The `sync/meta` row counting changes to the dead letters.
const DEAD_GENERATION: &str = "dead-generation";

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

fn bad_meta(what: &str) -> StandardError {
    StandardError::adapter("CORRUPT_OUTBOX", format!("outbox: a bad {what} in sync/meta"))
}

fn meta_u64(meta: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<u64>, StandardError> {
    match meta.get(key).map_err(storage)? {
        Some(v) => Ok(Some(u64::from_le_bytes(v.value().try_into().map_err(|_| bad_meta(key))?))),
        None => Ok(None),
    }
}

/// The idempotency-key row of a write: `resource \0 key`.
fn key_into(buf: &mut String, resource: &str, idempotency_key: &str) {
    buf.clear();
    buf.push_str(resource);
    buf.push('\u{0}');
    buf.push_str(idempotency_key);
}

/// The prefix of a record's rows in [`BY_RECORD`]: both parts length-prefixed, so no record's
/// prefix is a prefix of another's.
fn record_prefix(buf: &mut Vec<u8>, resource: &str, id: &str) {
    buf.clear();
    buf.extend_from_slice(&(resource.len() as u64).to_be_bytes());
    buf.extend_from_slice(resource.as_bytes());
    buf.extend_from_slice(&(id.len() as u64).to_be_bytes());
    buf.extend_from_slice(id.as_bytes());
}

/// `(resource, id)` of a [`BY_RECORD`] row, and its sequence number.
fn split_record_row(row: &[u8]) -> Option<(String, String, u64)> {
    let (n, rest) = row.split_first_chunk::<8>()?;
    let (resource, rest) = rest.split_at_checked(usize::try_from(u64::from_be_bytes(*n)).ok()?)?;
    let (n, rest) = rest.split_first_chunk::<8>()?;
    let (id, rest) = rest.split_at_checked(usize::try_from(u64::from_be_bytes(*n)).ok()?)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some((
        std::str::from_utf8(resource).ok()?.to_owned(),
        std::str::from_utf8(id).ok()?.to_owned(),
        u64::from_be_bytes(seq),
    ))
}

/// Whether the indexes exist (read side: never builds them).
fn indexed(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<bool, StandardError> {
    Ok(meta_u64(meta, INDEXED_KEY)?.is_some())
}

/// Brings the indexes up to date: indexes the items appended since the last time (reading
/// only their headers), or — on a file written before the indexes — every item, once.
fn catch_up(txn: &WriteTransaction) -> Result<(), StandardError> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let through = meta_u64(&meta, INDEXED_KEY)?;
    let last_seq = meta_u64(&meta, "next-seq")?.unwrap_or(1).saturating_sub(1);
    let from = match through {
        Some(s) if s >= last_seq => return Ok(()),
        Some(s) => s,
        None => {
            // No index yet: start from nothing.
            txn.delete_table(BY_RECORD).map_err(storage)?;
            txn.delete_table(READY).map_err(storage)?;
            txn.delete_table(WAITING).map_err(storage)?;
            txn.delete_table(IN_FLIGHT).map_err(storage)?;
            0
        }
    };
    let mut t = Tables::open(txn)?;
    let tail = t
        .items
        .range(from.saturating_add(1)..)
        .map_err(storage)?
        .map(|row| {
            let (k, v) = row.map_err(storage)?;
            Ok((k.value(), codec::decode_brief(k.value(), v.value())?))
        })
        .collect::<Result<Vec<_>, StandardError>>()?;
    let mut through = from.max(last_seq);
    for (seq, it) in tail {
        // The record's head if nothing of it was queued before.
        let head = t.head(&it.resource, &it.entity_id)?.is_none();
        t.row(&it.resource, &it.entity_id, seq);
        t.by_record.insert(t.buf.as_slice(), ()).map_err(storage)?;
        if let ItemState::InFlight { since_ms } = it.state {
            t.in_flight.insert(seq, since_ms).map_err(storage)?;
        }
        if head {
            t.place(seq, it.state, it.next_attempt_ms)?;
        }
        through = through.max(seq);
    }
    drop(t);
    meta.insert(INDEXED_KEY, through.to_le_bytes().as_slice()).map_err(storage)?;
    Ok(())
}

/// The outbox's tables, open in a write transaction.
///
/// The indexes, exact for every item up to [`INDEXED_KEY`] (every change after [`catch_up`]
/// keeps them so):
/// - [`BY_RECORD`]: every item under its record, in write order. A record's *head* is its
///   oldest item — the only one that may be in flight.
/// - [`READY`] / [`WAITING`]: the heads that are pending, by sequence number (or, while
///   they wait out a backoff, by the time it ends). A push reads only the items it takes.
/// - [`IN_FLIGHT`]: the items pushed and not answered, with when they were pushed.
///
/// The counts come from the tables' lengths (redb keeps them): no scan.
struct Tables<'t> {
    items: redb::Table<'t, u64, &'static [u8]>,
    keys: redb::Table<'t, &'static str, u64>,
    by_record: redb::Table<'t, &'static [u8], ()>,
    ready: redb::Table<'t, u64, ()>,
    waiting: redb::Table<'t, (i64, u64), ()>,
    in_flight: redb::Table<'t, u64, i64>,
    /// Scratch space (reused: no allocation per write).
    buf: Vec<u8>,
    lo: Vec<u8>,
    hi: Vec<u8>,
    key: String,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StandardError> {
        Ok(Self {
            items: txn.open_table(ITEMS).map_err(storage)?,
            keys: txn.open_table(KEYS).map_err(storage)?,
            by_record: txn.open_table(BY_RECORD).map_err(storage)?,
            ready: txn.open_table(READY).map_err(storage)?,
            waiting: txn.open_table(WAITING).map_err(storage)?,
            in_flight: txn.open_table(IN_FLIGHT).map_err(storage)?,
            buf: Vec::new(),
            lo: Vec::new(),
            hi: Vec::new(),
            key: String::new(),
        })
    }

    fn get(&self, seq: u64) -> Result<Option<OutboxItem>, StandardError> {
        match self.items.get(seq).map_err(storage)? {
            Some(v) => codec::decode(seq, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&mut self, item: &OutboxItem) -> Result<(), StandardError> {
        codec::encode_item(&mut self.buf, item)?;
        self.items.insert(item.seq, self.buf.as_slice()).map_err(storage)?;
        Ok(())
    }

    /// Sets `lo ..= hi` to the rows of a record.
    fn bounds(&mut self, resource: &str, id: &str) {
        record_prefix(&mut self.lo, resource, id);
        self.hi.clear();
        self.hi.extend_from_slice(&self.lo);
        self.lo.extend_from_slice(&[0; 8]);
        self.hi.extend_from_slice(&[0xff; 8]);
    }

    /// Sets `buf` to an item's row in [`BY_RECORD`].
    fn row(&mut self, resource: &str, id: &str, seq: u64) {
        record_prefix(&mut self.buf, resource, id);
        self.buf.extend_from_slice(&seq.to_be_bytes());
    }

    /// A record's items' sequence numbers, oldest first.
    fn record_seqs(&mut self, resource: &str, id: &str) -> Result<Vec<u64>, StandardError> {
        self.bounds(resource, id);
        let mut out = Vec::new();
        for row in self.by_record.range::<&[u8]>(self.lo.as_slice()..=self.hi.as_slice()).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            out.push(row_seq(k.value())?);
        }
        Ok(out)
    }

    /// A record's head.
    fn head(&mut self, resource: &str, id: &str) -> Result<Option<u64>, StandardError> {
        self.bounds(resource, id);
        let first = self.by_record.range::<&[u8]>(self.lo.as_slice()..=self.hi.as_slice()).map_err(storage)?.next();
        match first {
            Some(row) => Ok(Some(row_seq(row.map_err(storage)?.0.value())?)),
            None => Ok(None),
        }
    }

    fn index(&mut self, item: &OutboxItem) -> Result<(), StandardError> {
        self.row(&item.resource, &item.entity_id, item.seq);
        self.by_record.insert(self.buf.as_slice(), ()).map_err(storage)?;
        Ok(())
    }

    /// Takes an item out of the ready / waiting heads.
    fn unplace(&mut self, item: &OutboxItem) -> Result<(), StandardError> {
        self.ready.remove(item.seq).map_err(storage)?;
        self.waiting.remove((item.next_attempt_ms, item.seq)).map_err(storage)?;
        Ok(())
    }

    /// Files a head: ready, or waiting out its backoff (nothing while it is in flight).
    fn place(&mut self, seq: u64, state: ItemState, next_attempt_ms: i64) -> Result<(), StandardError> {
        self.ready.remove(seq).map_err(storage)?;
        self.waiting.remove((next_attempt_ms, seq)).map_err(storage)?;
        if state == ItemState::Pending {
            if next_attempt_ms > 0 {
                self.waiting.insert((next_attempt_ms, seq), ()).map_err(storage)?;
            } else {
                self.ready.insert(seq, ()).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Files a record's head after its items changed.
    fn refresh_head(&mut self, resource: &str, id: &str) -> Result<(), StandardError> {
        if let Some(seq) = self.head(resource, id)?
            && let Some(head) = self.get(seq)?
        {
            self.place(head.seq, head.state, head.next_attempt_ms)?;
        }
        Ok(())
    }

    /// Removes an item and every index row of it.
    fn remove(&mut self, item: &OutboxItem) -> Result<(), StandardError> {
        self.items.remove(item.seq).map_err(storage)?;
        key_into(&mut self.key, &item.resource, &item.entry.item.meta.idempotency_key);
        self.keys.remove(self.key.as_str()).map_err(storage)?;
        self.row(&item.resource, &item.entity_id, item.seq);
        self.by_record.remove(self.buf.as_slice()).map_err(storage)?;
        self.in_flight.remove(item.seq).map_err(storage)?;
        self.unplace(item)
    }
}

fn row_seq(row: &[u8]) -> Result<u64, StandardError> {
    row.last_chunk::<8>().map(|s| u64::from_be_bytes(*s)).ok_or_else(|| bad_meta("record index row"))
}

/// Queues a frame's writes, inside its transaction: the tables stay open from the first
/// write to the last, and each write costs one item and its idempotency key. (The index
/// rows follow in the next transaction that reads the indexes, which first indexes every
/// item queued since the last one.)
pub struct Enqueuer<'t> {
    items: redb::Table<'t, u64, &'static [u8]>,
    keys: redb::Table<'t, &'static str, u64>,
    key: String,
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    own: redb::Table<'t, &'static str, (u64, u64)>,
    next_seq: u64,
    now_ms: i64,
    item: Vec<u8>,
    queued: usize,
}

impl<'t> Enqueuer<'t> {
    /// Opens the outbox in the caller's transaction (building its indexes first if the file
    /// has none yet).
    pub fn new(txn: &'t WriteTransaction, now_ms: i64) -> Result<Self, StandardError> {
        if !indexed(&txn.open_table(META).map_err(storage)?)? {
            catch_up(txn)?;
        }
        let meta = txn.open_table(META).map_err(storage)?;
        let next_seq = meta_u64(&meta, "next-seq")?.unwrap_or(1);
        Ok(Self {
            items: txn.open_table(ITEMS).map_err(storage)?,
            keys: txn.open_table(KEYS).map_err(storage)?,
            key: String::new(),
            meta,
            own: txn.open_table(OWN).map_err(storage)?,
            next_seq,
            now_ms,
            item: Vec::new(),
            queued: 0,
        })
    }

    /// Queues one write (skipped if its idempotency key is queued already): returns its
    /// sequence number. `stored` may be the JSON of the record as the write left it locally;
    /// a full-value write then carries those bytes instead of encoding its value again (the
    /// server reads the same record from both).
    ///
    /// Its base version is rebased on this client's own acked versions (see
    /// [`rebase_on_own_versions`]).
    pub fn push(
        &mut self,
        resource: &str,
        entry: &WireWriteEntry,
        stored: Option<&[u8]>,
    ) -> Result<Option<u64>, StandardError> {
        let Some(entity_id) = entry_target(entry) else {
            return Err(StandardError::invalid_write("a sync write needs its record's id"));
        };
        let seq = self.next_seq;
        key_into(&mut self.key, resource, &entry.item.meta.idempotency_key);
        // One lookup for the usual case (a new key): insert, and put back a key queued already.
        let queued = self.keys.insert(self.key.as_str(), seq).map_err(storage)?.map(|g| g.value());
        if let Some(prev) = queued {
            self.keys.insert(self.key.as_str(), prev).map_err(storage)?;
            return Ok(None);
        }
        let mut base = entry.item.base_version;
        if entry.action != WriteAction::Create && !commutative(entry) {
            key_into(&mut self.key, resource, &entity_id);
            let own = self.own.get(self.key.as_str()).map_err(storage)?.map(|v| v.value());
            if let Some((from, to)) = own
                && (from..to).contains(&base.unwrap_or(0))
            {
                base = Some(to);
            }
        }
        let stored = stored.filter(|_| pushes_record(entry));
        codec::encode(&mut self.item, &codec::Header::new(self.now_ms), resource, &entity_id, entry, base, stored)?;
        self.items.insert(seq, self.item.as_slice()).map_err(storage)?;
        self.next_seq += 1;
        self.queued += 1;
        Ok(Some(seq))
    }

    /// Stores the next sequence number; returns how many writes were queued.
    pub fn finish(mut self) -> Result<usize, StandardError> {
        self.meta.insert("next-seq", self.next_seq.to_le_bytes().as_slice()).map_err(storage)?;
        Ok(self.queued)
    }
}

/// Queues write entries inside the caller's transaction (the frame's). Entries whose
/// idempotency key is queued already are skipped. Returns the sequence numbers used.
pub fn enqueue(
    txn: &WriteTransaction,
    resource: &str,
    entries: &[WireWriteEntry],
    now_ms: i64,
) -> Result<Vec<u64>, StandardError> {
    let mut q = Enqueuer::new(txn, now_ms)?;
    let mut used = Vec::with_capacity(entries.len());
    for e in entries {
        used.extend(q.push(resource, e, None)?);
    }
    q.finish()?;
    Ok(used)
}

/// A patch of commutative ops sent without a base version: it never needs one.
fn commutative(e: &WireWriteEntry) -> bool {
    e.action == WriteAction::Patch
        && e.item.base_version.is_none()
        && e.item.ops.as_ref().is_some_and(|ops| ops.iter().all(|o| o.is_commutative()))
}

/// A write the outbox queues with the record as stored locally for its value (a create or a
/// full-value write): its given value is not needed once applied.
pub(crate) fn pushes_record(e: &WireWriteEntry) -> bool {
    e.action == WriteAction::Create || full_value(e)
}

/// A full-value write (its value is the whole record), which a later one can replace.
fn full_value(e: &WireWriteEntry) -> bool {
    let merge = e.options.as_ref().and_then(|o| o.merge) == Some(true);
    matches!(e.action, WriteAction::Update | WriteAction::Upsert) && !merge
}

/// Reserves up to `max` items to push: per record only its oldest item, and only when it is
/// not in flight or waiting out a backoff. A record's later full-value updates are compacted
/// into the oldest first (one write instead of many). Reads only the items it takes (and
/// the updates compacted into them).
pub fn reserve(db: &Database, max: usize, now_ms: i64) -> Result<Vec<OutboxItem>, StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    catch_up(&txn)?;
    let mut out = Vec::new();
    {
        let mut t = Tables::open(&txn)?;
        // Backoffs that are over: their heads are ready.
        let due = t
            .waiting
            .range(..=(now_ms, u64::MAX))
            .map_err(storage)?
            .map(|row| row.map(|(k, _)| k.value()).map_err(storage))
            .collect::<Result<Vec<_>, _>>()?;
        for (at, seq) in due {
            t.waiting.remove((at, seq)).map_err(storage)?;
            t.ready.insert(seq, ()).map_err(storage)?;
        }
        // Oldest records first (by their head's sequence number).
        let mut from = 0;
        while out.len() < max {
            let next = t.ready.range(from..).map_err(storage)?.next().map(|row| row.map(|(k, _)| k.value()));
            let Some(seq) = next.transpose().map_err(storage)? else { break };
            from = seq.saturating_add(1);
            let Some(mut head) = t.get(seq)? else {
                t.ready.remove(seq).map_err(storage)?;
                continue;
            };
            if t.head(&head.resource, &head.entity_id)? != Some(seq) || head.state != ItemState::Pending {
                // Not (or no longer) a pending head: filed by its record's changes elsewhere.
                t.ready.remove(seq).map_err(storage)?;
                continue;
            }
            if head.next_attempt_ms > now_ms {
                t.place(head.seq, head.state, head.next_attempt_ms)?;
                continue;
            }
            t.unplace(&head)?;
            // Compact: later full-value updates of the record replace the head's value — only
            // while the head was never sent (a re-sent head replays its first result under
            // its idempotency key, and a value compacted into it would be lost).
            if !head.sent && (full_value(&head.entry) || head.entry.action == WriteAction::Create) {
                for later in t.record_seqs(&head.resource, &head.entity_id)?.into_iter().filter(|s| *s > seq) {
                    let Some(next) = t.get(later)? else { break };
                    if !full_value(&next.entry) {
                        break;
                    }
                    t.remove(&next)?;
                    head.entry.item.value = next.entry.item.value;
                }
            }
            head.state = ItemState::InFlight { since_ms: now_ms };
            head.sent = true;
            t.put(&head)?;
            t.in_flight.insert(seq, now_ms).map_err(storage)?;
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

/// [`settle`] inside the caller's transaction (with the local writebacks of the acks). Reads
/// only the settled items (and, after an ack, the same record's later items, to rebase them).
pub fn settle_in(txn: &WriteTransaction, outcomes: &[(u64, Outcome)], max_attempts: u32) -> Result<(), StandardError> {
    catch_up(txn)?;
    let mut t = Tables::open(txn)?;
    let mut dead = txn.open_table(DEAD).map_err(storage)?;
    let mut dead_changed = false;
    let mut bury = |t: &mut Tables, item: OutboxItem, error: &StandardError, current: Option<Current>| {
        t.remove(&item)?;
        let seq = item.seq;
        let letter = DeadLetter { item, error: error.clone(), current };
        dead.insert(seq, enc(&letter)?.as_slice()).map_err(storage)?;
        dead_changed = true;
        Ok::<_, StandardError>(())
    };
    for (seq, outcome) in outcomes {
        let Some(mut item) = t.get(*seq)? else { continue };
        match outcome {
            Outcome::Acked { version } => {
                t.remove(&item)?;
                // Later writes of an acked record are based on the version the server gave it.
                if let Some(v) = version {
                    for later in t.record_seqs(&item.resource, &item.entity_id)? {
                        let Some(mut it) = t.get(later)? else { continue };
                        if it.entry.action == WriteAction::Create || commutative(&it.entry) {
                            continue;
                        }
                        it.entry.item.base_version = Some(*v);
                        t.put(&it)?;
                    }
                }
            }
            Outcome::Rejected { error, current } => bury(&mut t, item.clone(), error, current.clone())?,
            Outcome::Retry { error, retry_at_ms } => {
                item.attempts += 1;
                if item.attempts >= max_attempts {
                    bury(&mut t, item.clone(), error, None)?;
                } else {
                    t.unplace(&item)?;
                    item.state = ItemState::Pending;
                    item.next_attempt_ms = *retry_at_ms;
                    t.put(&item)?;
                    t.in_flight.remove(item.seq).map_err(storage)?;
                }
            }
        }
        t.refresh_head(&item.resource, &item.entity_id)?;
    }
    drop(t);
    drop(dead);
    if dead_changed {
        bump_dead_generation(txn)?;
    }
    Ok(())
}

fn bump_dead_generation(txn: &WriteTransaction) -> Result<(), StandardError> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let g = meta_u64(&meta, DEAD_GENERATION)?.unwrap_or(0).wrapping_add(1);
    meta.insert(DEAD_GENERATION, g.to_le_bytes().as_slice()).map_err(storage)?;
    Ok(())
}

/// The records with items in the outbox, as (resource, id): their local values must not be
/// overwritten by pulled changes until those items are pushed. (Reads the whole index: to
/// ask about a few records, use [`queued_records`].)
pub fn pending_records(txn: &WriteTransaction) -> Result<HashSet<(String, String)>, StandardError> {
    catch_up(txn)?;
    let table = txn.open_table(BY_RECORD).map_err(storage)?;
    let mut out = HashSet::new();
    for row in table.iter().map_err(storage)? {
        let (k, _) = row.map_err(storage)?;
        let (resource, id, _) = split_record_row(k.value()).ok_or_else(|| bad_meta("record index row"))?;
        out.insert((resource, id));
    }
    Ok(out)
}

/// Which records have items in the outbox, asked one record at a time (an index lookup each).
pub struct QueuedRecords<'t> {
    table: redb::Table<'t, &'static [u8], ()>,
    buf: Vec<u8>,
}

impl QueuedRecords<'_> {
    /// Whether the record has items in the outbox: its local value must not be overwritten by
    /// pulled changes until they are pushed.
    pub fn contains(&mut self, resource: &str, id: &str) -> Result<bool, StandardError> {
        record_prefix(&mut self.buf, resource, id);
        let mut hi = self.buf.clone();
        self.buf.extend_from_slice(&[0; 8]);
        hi.extend_from_slice(&[0xff; 8]);
        Ok(self.table.range::<&[u8]>(self.buf.as_slice()..=hi.as_slice()).map_err(storage)?.next().is_some())
    }
}

/// Opens [`QueuedRecords`] in the caller's transaction.
pub fn queued_records(txn: &WriteTransaction) -> Result<QueuedRecords<'_>, StandardError> {
    catch_up(txn)?;
    Ok(QueuedRecords { table: txn.open_table(BY_RECORD).map_err(storage)?, buf: Vec::new() })
}

/// Returns in-flight items reserved before `older_than_ms` to pending (all of them at start:
/// pass `i64::MAX`). Returns how many.
pub fn recover(db: &Database, older_than_ms: i64) -> Result<usize, StandardError> {
    let txn = db.begin_write().map_err(storage)?;
    catch_up(&txn)?;
    let mut n = 0;
    {
        let mut t = Tables::open(&txn)?;
        let stale = t
            .in_flight
            .iter()
            .map_err(storage)?
            .map(|row| row.map(|(k, v)| (k.value(), v.value())).map_err(storage))
            .collect::<Result<Vec<_>, _>>()?;
        for (seq, _) in stale.into_iter().filter(|(_, since)| *since < older_than_ms) {
            let Some(mut it) = t.get(seq)? else {
                t.in_flight.remove(seq).map_err(storage)?;
                continue;
            };
            t.in_flight.remove(seq).map_err(storage)?;
            if matches!(it.state, ItemState::InFlight { .. }) {
                it.state = ItemState::Pending;
                // (An item written before `sent` existed was in flight: it was sent.)
                it.sent = true;
                t.put(&it)?;
                t.refresh_head(&it.resource, &it.entity_id)?;
                n += 1;
            }
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
    catch_up(&txn)?;
    let found = {
        let letter: Option<DeadLetter> = match txn.open_table(DEAD).map_err(storage)?.remove(seq).map_err(storage)? {
            Some(v) => Some(dec(v.value())?),
            None => None,
        };
        if let (Some(l), true) = (&letter, retry) {
            let mut t = Tables::open(&txn)?;
            let mut it = l.item.clone();
            it.seq = seq;
            it.state = ItemState::Pending;
            it.attempts = 0;
            it.next_attempt_ms = 0;
            // A newer write may have reused the letter's idempotency key once the letter left
            // the queue: the retry then goes under a key of its own (sent under the shared
            // one, the server would answer one of the two writes with the other's result).
            let original = it.entry.item.meta.idempotency_key.clone();
            let mut attempt = 0u32;
            loop {
                key_into(&mut t.key, &it.resource, &it.entry.item.meta.idempotency_key);
                match t.keys.get(t.key.as_str()).map_err(storage)?.map(|g| g.value()) {
                    Some(other) if other != seq => {
                        attempt += 1;
                        it.entry.item.meta.idempotency_key = format!("{original}#retry-{seq}-{attempt}");
                    }
                    _ => break,
                }
            }
            // The record's head so far stops being its head if the letter is older.
            let before = t.head(&it.resource, &it.entity_id)?;
            t.put(&it)?;
            t.keys.insert(t.key.as_str(), it.seq).map_err(storage)?;
            t.index(&it)?;
            if let Some(h) = before.filter(|h| *h > seq)
                && let Some(prev) = t.get(h)?
            {
                t.unplace(&prev)?;
            }
            t.refresh_head(&it.resource, &it.entity_id)?;
        }
        letter.is_some()
    };
    if found {
        bump_dead_generation(&txn)?;
    }
    txn.commit().map_err(storage)?;
    Ok(found)
}

/// Counts (a read transaction: it never waits for the writer). Reads three table lengths
/// and a counter, whatever the size of the outbox.
pub fn stats(db: &Database) -> Result<OutboxStats, StandardError> {
    Ok(stats_and_dead_generation(db)?.0)
}

/// [`stats`], and a number that changes whenever the dead letters do (to re-read them only
/// then).
pub(crate) fn stats_and_dead_generation(db: &Database) -> Result<(OutboxStats, u64), StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    let meta = match txn.open_table(META) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e)),
    };
    let (last_seq, generation, indexed) = match &meta {
        Some(m) => (
            meta_u64(m, "next-seq")?.unwrap_or(1).saturating_sub(1),
            meta_u64(m, DEAD_GENERATION)?.unwrap_or(0),
            indexed(m)?,
        ),
        None => (0, 0, false),
    };
    let dead = table_len(&txn, DEAD)?;
    let (pending, in_flight) = if indexed {
        let in_flight = table_len(&txn, IN_FLIGHT)?;
        (table_len(&txn, ITEMS)?.saturating_sub(in_flight), in_flight)
    } else {
        // A file written before the indexes, not yet opened for writing: count by reading.
        let items = match txn.open_table(ITEMS) {
            Ok(t) => items_of(&t)?,
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(storage(e)),
        };
        let in_flight = items.iter().filter(|i| matches!(i.state, ItemState::InFlight { .. })).count();
        (items.len() - in_flight, in_flight)
    };
    Ok((OutboxStats { pending, in_flight, dead, last_seq }, generation))
}

/// A table's length (redb keeps it: no scan); 0 when the table does not exist yet.
fn table_len(txn: &redb::ReadTransaction, table: impl TableHandle) -> Result<usize, StandardError> {
    match txn.open_untyped_table(table) {
        Ok(t) => Ok(usize::try_from(t.len().map_err(storage)?).unwrap_or(usize::MAX)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(storage(e)),
    }
}

fn items_of(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<OutboxItem>, StandardError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        out.push(codec::decode(k.value(), v.value())?);
    }
    Ok(out)
}

/// Every queued item, in write order. Reads and decodes the whole outbox: for tools and
/// tests (the engine itself never needs it).
pub fn items(db: &Database) -> Result<Vec<OutboxItem>, StandardError> {
    let txn = db.begin_read().map_err(storage)?;
    match txn.open_table(ITEMS) {
        Ok(t) => items_of(&t),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(storage(e)),
    }
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
mod tests;
