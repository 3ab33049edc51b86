//! What atoma tells the game, as Bevy messages, and the write intents game systems buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bevy_ecs::message::Message;

use crate::core::{Entry, Op, OpMeta, Record, WriteError};
use crate::protocol::StandardError;

static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// Names one intent (or one read) so its result can be matched when it settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

impl Ticket {
    pub(crate) fn next() -> Ticket {
        Ticket(NEXT_TICKET.fetch_add(1, Ordering::Relaxed))
    }
}

/// A buffered write, reduced with the rest of the frame's writes into one commit.
/// Made by [`Writer`](crate::runtime::Writer).
#[derive(Message, Debug)]
pub struct WriteIntent<T: Record> {
    pub(crate) ticket: Ticket,
    pub(crate) op: Op<T>,
    pub(crate) meta: OpMeta,
}

/// Why a write failed. The store is left as it was before the write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteFailure<T: Record> {
    /// The store rejected it: not found, duplicate, version conflict (with the current
    /// value), or invalid (a failed validation or patch).
    #[error(transparent)]
    Rejected(WriteError<T>),
    /// The route's executor rejected it; `current` is its copy on a conflict (already
    /// written back into the store).
    #[error("{store}: the executor rejected the write: {error}")]
    Remote {
        /// The store.
        store: &'static str,
        /// The executor's error.
        error: StandardError,
        /// The executor's current copy, on a conflict.
        current: Option<Box<Entry<T>>>,
    },
    /// The executor failed (disk, network): the optimistic change was rolled back.
    #[error("{store}: the write could not be persisted and was rolled back: {error}")]
    Unavailable {
        /// The store.
        store: &'static str,
        /// What failed.
        error: StandardError,
    },
    /// No route resolves for the write.
    #[error("{store}: no route named {route:?} (register it on AtomaPlugin, or set the store's route)")]
    NoRoute {
        /// The store.
        store: &'static str,
        /// The route asked for (`None`: no default either).
        route: Option<String>,
    },
    /// The record is not in the store and the route forbids an implicit fetch.
    #[error(
        "{store}: record {id} is not in the store, and route {route:?} forbids fetching it for a write (load it first)"
    )]
    CacheMiss {
        /// The store.
        store: &'static str,
        /// The id.
        id: T::Id,
        /// The route.
        route: String,
    },
}

/// How a write settled. Written once per intent, after the executor answered (or at once
/// when the store rejected it).
#[derive(Message, Debug)]
pub struct WriteSettled<T: Record> {
    /// The intent's ticket.
    pub ticket: Ticket,
    /// The record's id.
    pub id: Option<T::Id>,
    /// The new version (`None` after a delete), or why it failed.
    pub result: Result<Option<u64>, WriteFailure<T>>,
}

impl<T: Record> WriteSettled<T> {
    /// Whether the write succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// A store committed: records changed this frame.
#[derive(Message, Debug, Clone)]
pub struct Committed<T: Record> {
    /// The store's revision after the commit.
    pub revision: u64,
    /// The ids that changed.
    pub changed: Vec<T::Id>,
}

/// A remote read started.
#[derive(Message, Debug, Clone)]
pub struct ReadStarted {
    /// The read's ticket.
    pub ticket: Ticket,
    /// The store.
    pub store: &'static str,
    /// The route.
    pub route: String,
}

/// Where a read's results came from.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadSource {
    /// The local store.
    Local,
    /// The route's executor.
    Remote,
    /// The executor failed; the local store answered instead.
    Fallback(StandardError),
}

/// A read finished: the ids it returned, in order (their records are in the store now).
#[derive(Message, Debug, Clone)]
pub struct ReadFinished<T: Record> {
    /// The read's ticket.
    pub ticket: Ticket,
    /// The ids, in order.
    pub ids: Vec<T::Id>,
    /// Paging of the result.
    pub page_info: crate::core::PageInfo,
    /// Where the results came from.
    pub source: ReadSource,
    /// How long the read took.
    pub duration: Duration,
}
