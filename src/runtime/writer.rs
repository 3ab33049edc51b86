//! `Writer<T>`: the system parameter game systems write with. Every call buffers one intent
//! and returns its ticket; the store's reduce system folds the frame's intents into one commit.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bevy_ecs::change_detection::Tick;
use bevy_ecs::message::MessageWriter;
use bevy_ecs::system::{Local, SystemChangeTick, SystemParam};
use serde_json::{Map, Value as Json};

use super::messages::{Ticket, WriteIntent};
use crate::core::{Op, OpMeta, Origin, PatchOp, Record, UpdateWith, UpsertMode};

/// Options of a write: its route, its undo group, the version it is based on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The route (default: the store's).
    pub route: Option<String>,
    /// The undo group (default: one group per frame).
    pub action_id: Option<String>,
    /// The version the write is based on (checked when given).
    pub base_version: Option<u64>,
    /// An idempotency key (default, and in place of an empty one: a fresh unique key).
    pub idempotency_key: Option<String>,
}

impl WriteOptions {
    /// Through this route.
    pub fn route(mut self, r: impl Into<String>) -> Self {
        self.route = Some(r.into());
        self
    }
    /// In this undo group.
    pub fn action(mut self, a: impl Into<String>) -> Self {
        self.action_id = Some(a.into());
        self
    }
    /// Based on this version.
    pub fn base_version(mut self, v: u64) -> Self {
        self.base_version = Some(v);
        self
    }
    /// With this idempotency key.
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }
}

fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A fresh idempotency key: this process's nonce and the ticket (`{nonce:016x}-{ticket:x}`).
fn fresh_key(ticket: Ticket) -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| format!("{:016x}-", process_nonce()));
    let mut key = String::with_capacity(prefix.len() + 16);
    key.push_str(prefix);
    let t = ticket.0;
    let digits = (64 - t.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        let d = ((t >> (i * 4)) & 0xf) as u8;
        key.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
    key
}

/// A write's metadata. Without a key in `opts` the key is left empty: it is the fresh key of
/// the ticket ([`ensure_key`]), made only where it is used (on the wire, and where history
/// pairs a write with its executor's copy), not once per intent on the game thread.
pub(crate) fn meta(opts: &WriteOptions, origin: Origin) -> OpMeta {
    meta_at(opts, origin, now_ms())
}

/// [`meta`] with the client time given.
fn meta_at(opts: &WriteOptions, origin: Origin, client_time_ms: i64) -> OpMeta {
    OpMeta {
        idempotency_key: opts.idempotency_key.clone().unwrap_or_default(),
        client_time_ms,
        origin,
        action_id: opts.action_id.clone(),
        route: opts.route.clone(),
    }
}

/// Gives a write left without an idempotency key by [`meta`] its ticket's fresh key.
pub(crate) fn ensure_key(meta: &mut OpMeta, ticket: Ticket) {
    if meta.idempotency_key.is_empty() {
        meta.idempotency_key = fresh_key(ticket);
    }
}

/// A write's idempotency key (see [`ensure_key`]).
pub(crate) fn key_of(meta: &OpMeta, ticket: Ticket) -> String {
    if meta.idempotency_key.is_empty() { fresh_key(ticket) } else { meta.idempotency_key.clone() }
}

/// Writes to `Store<T>` from a system: each call buffers an intent and returns its ticket;
/// results arrive as [`WriteSettled<T>`](crate::runtime::WriteSettled) messages.
///
/// A write's client time is the wall clock at the first write of the system's run (read once
/// per run: a read of the clock costs about a third of a write).
#[derive(SystemParam)]
pub struct Writer<'w, 's, T: Record> {
    intents: MessageWriter<'w, WriteIntent<T>>,
    /// Tells one run of the system from the next.
    ticks: SystemChangeTick,
    /// The run the clock was last read in, and what it read.
    clock: Local<'s, Option<(Tick, i64)>>,
}

impl<T: Record> Writer<'_, '_, T> {
    fn push(&mut self, op: Op<T>, opts: &WriteOptions) -> Ticket {
        let ticket = Ticket::next();
        let run = self.ticks.this_run();
        let now = match *self.clock {
            Some((r, t)) if r == run => t,
            _ => {
                let t = now_ms();
                *self.clock = Some((run, t));
                t
            }
        };
        self.intents.write(WriteIntent { ticket, op, meta: meta_at(opts, Origin::User, now) });
        ticket
    }

    /// Applies `opts` to the writes made through the returned handle.
    pub fn with(&mut self, opts: WriteOptions) -> WriterWith<'_, Self> {
        WriterWith { writer: self, opts }
    }

    /// Creates a record (its id must be new).
    pub fn create(&mut self, record: T) -> Ticket {
        self.push(Op::Create(record), &WriteOptions::default())
    }
    /// Changes a record in place.
    pub fn update(&mut self, id: T::Id, f: impl FnOnce(&mut T) + Send + Sync + 'static) -> Ticket {
        self.with(WriteOptions::default()).update(id, f)
    }
    /// Replaces a record (by its id).
    pub fn replace(&mut self, record: T) -> Ticket {
        self.with(WriteOptions::default()).replace(record)
    }
    /// Merges top-level fields into a record.
    pub fn merge(&mut self, id: T::Id, fields: Map<String, Json>) -> Ticket {
        self.with(WriteOptions::default()).merge(id, fields)
    }
    /// Creates or replaces a record, last write wins.
    pub fn upsert(&mut self, record: T) -> Ticket {
        self.with(WriteOptions::default()).upsert(record, false, UpsertMode::Loose)
    }
    /// Deletes a record.
    pub fn delete(&mut self, id: T::Id) -> Ticket {
        self.with(WriteOptions::default()).delete(id)
    }
    /// Applies patch ops (commutative ones never conflict).
    pub fn patch(&mut self, id: T::Id, ops: Vec<PatchOp>) -> Ticket {
        self.with(WriteOptions::default()).patch(id, ops)
    }
    /// Adds `by` to a numeric field: a commutative op for hot counters.
    pub fn inc(&mut self, id: T::Id, path: &str, by: impl Into<serde_json::Number>) -> Ticket {
        self.patch(id, vec![PatchOp::inc(path, by)])
    }
    /// Creates many records: one ticket each, all-settled.
    pub fn create_many(&mut self, records: impl IntoIterator<Item = T>) -> Vec<Ticket> {
        records.into_iter().map(|r| self.create(r)).collect()
    }
    /// Changes many records with one closure: one ticket each.
    pub fn update_many(
        &mut self,
        ids: impl IntoIterator<Item = T::Id>,
        f: impl Fn(&mut T) + Clone + Send + Sync + 'static,
    ) -> Vec<Ticket> {
        ids.into_iter().map(|id| self.update(id, f.clone())).collect()
    }
    /// Upserts many records.
    pub fn upsert_many(&mut self, records: impl IntoIterator<Item = T>) -> Vec<Ticket> {
        records.into_iter().map(|r| self.upsert(r)).collect()
    }
    /// Deletes many records.
    pub fn delete_many(&mut self, ids: impl IntoIterator<Item = T::Id>) -> Vec<Ticket> {
        ids.into_iter().map(|id| self.delete(id)).collect()
    }
}

/// Something intents can be pushed into.
pub trait PushIntent<T: Record> {
    /// Pushes one intent.
    fn push_op(&mut self, op: Op<T>, opts: &WriteOptions) -> Ticket;
}

impl<T: Record> PushIntent<T> for Writer<'_, '_, T> {
    fn push_op(&mut self, op: Op<T>, opts: &WriteOptions) -> Ticket {
        self.push(op, opts)
    }
}

/// A [`Writer`] with options.
pub struct WriterWith<'a, W> {
    writer: &'a mut W,
    opts: WriteOptions,
}

impl<W> WriterWith<'_, W> {
    fn go<T: Record>(&mut self, op: Op<T>) -> Ticket
    where
        W: PushIntent<T>,
    {
        self.writer.push_op(op, &self.opts)
    }

    /// See [`Writer::create`].
    pub fn create<T: Record>(&mut self, record: T) -> Ticket
    where
        W: PushIntent<T>,
    {
        self.go(Op::Create(record))
    }
    /// See [`Writer::update`].
    pub fn update<T: Record>(&mut self, id: T::Id, f: impl FnOnce(&mut T) + Send + Sync + 'static) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Update { id, base_version, with: UpdateWith::Closure(Box::new(f)) })
    }
    /// See [`Writer::replace`].
    pub fn replace<T: Record>(&mut self, record: T) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Update { id: record.id().clone(), base_version, with: UpdateWith::Replace(record) })
    }
    /// See [`Writer::merge`].
    pub fn merge<T: Record>(&mut self, id: T::Id, fields: Map<String, Json>) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Update { id, base_version, with: UpdateWith::Merge(fields) })
    }
    /// Creates or changes a record; `merge` keeps fields the record does not serialize;
    /// `strict` checks the base version of an existing record.
    pub fn upsert<T: Record>(&mut self, record: T, merge: bool, mode: UpsertMode) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Upsert { record, merge, mode, base_version })
    }
    /// See [`Writer::delete`].
    pub fn delete<T: Record>(&mut self, id: T::Id) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Delete { id, base_version })
    }
    /// See [`Writer::patch`].
    pub fn patch<T: Record>(&mut self, id: T::Id, ops: Vec<PatchOp>) -> Ticket
    where
        W: PushIntent<T>,
    {
        let base_version = self.opts.base_version;
        self.go(Op::Patch { id, base_version, ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keys_are_the_nonce_and_the_ticket_in_hex() {
        for t in [0u64, 1, 9, 10, 15, 16, 255, 0xdead_beef, u64::MAX] {
            assert_eq!(fresh_key(Ticket(t)), format!("{:016x}-{:x}", process_nonce(), t));
        }
    }

    #[test]
    fn a_write_without_a_key_gets_its_tickets_fresh_key_where_used() {
        let mut m = meta(&WriteOptions::default(), Origin::User);
        assert!(m.idempotency_key.is_empty(), "no key is made on the game thread");
        assert_eq!(key_of(&m, Ticket(42)), fresh_key(Ticket(42)));
        ensure_key(&mut m, Ticket(42));
        assert_eq!(m.idempotency_key, fresh_key(Ticket(42)));
        let mut given = meta(&WriteOptions::default().idempotency_key("reward-42"), Origin::User);
        assert_eq!(key_of(&given, Ticket(7)), "reward-42");
        ensure_key(&mut given, Ticket(7));
        assert_eq!(given.idempotency_key, "reward-42");
    }
}
