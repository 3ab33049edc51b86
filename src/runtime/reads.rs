//! Reads through a store's route: fetch policies, merge policies, local fallback.

use std::time::Instant;

use bevy_ecs::system::{Res, ResMut, SystemParam};

use super::flush::{Outgoing, QueryPurpose};
use super::messages::{ReadFinished, ReadSource, ReadStarted, Ticket};
use super::reduce::StoreState;
use super::route::Routes;
use super::store::Store;
use crate::core::{Entry, Op, Query, Record};
use crate::protocol::QueryRequest;

/// Where a read looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FetchPolicy {
    /// The local store only.
    CacheOnly,
    /// The route's executor; results are merged into the store.
    NetworkOnly,
    /// The local store at once, then the executor.
    #[default]
    CacheAndNetwork,
}

/// How a read's remote results enter the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergePolicy {
    /// Remote records replace local copies (unless the local copy is newer).
    #[default]
    Replace,
    /// Only records the store lacks, or has at an older version, are taken.
    UpsertOnly,
    /// Remote records are merged field by field: fields the remote copy lacks are kept.
    PreserveMissing,
}

impl MergePolicy {
    pub(crate) fn op<T: Record>(self, local: Option<&Entry<T>>, remote: T, version: u64) -> Option<Op<T>> {
        let id = remote.id().clone();
        match (self, local) {
            (MergePolicy::UpsertOnly, Some(l)) if l.version >= version => None,
            (MergePolicy::PreserveMissing, Some(l)) => {
                let (Ok(serde_json::Value::Object(mut base)), Ok(serde_json::Value::Object(over))) =
                    (serde_json::to_value(&*l.record), serde_json::to_value(&remote))
                else {
                    return Some(Op::Remote { id, version, record: Some(remote) });
                };
                base.extend(over);
                let merged = serde_json::from_value(serde_json::Value::Object(base)).unwrap_or(remote);
                Some(Op::Remote { id, version, record: Some(merged) })
            }
            _ => Some(Op::Remote { id, version, record: Some(remote) }),
        }
    }
}

/// A read waiting for its executor.
#[derive(Debug)]
pub(crate) struct PendingRead {
    pub query: Query,
    pub merge: MergePolicy,
    pub list: bool,
    pub started: Instant,
}

/// Starts reads of `Store<T>` through its route. Results arrive as
/// [`ReadFinished<T>`] messages; remote records are in the store by then.
#[derive(SystemParam)]
pub struct Reader<'w, T: Record> {
    store: Res<'w, Store<T>>,
    state: ResMut<'w, StoreState<T>>,
    routes: Res<'w, Routes>,
    outgoing: ResMut<'w, Outgoing>,
    started: bevy_ecs::message::MessageWriter<'w, ReadStarted>,
}

impl<T: Record> Reader<'_, T> {
    /// Reads `query` with a fetch policy, merging remote results with `Replace`.
    pub fn fetch(&mut self, query: Query, policy: FetchPolicy) -> Ticket {
        self.read(query, policy, MergePolicy::Replace, false)
    }

    /// Reads all records matching `query` and aligns the store with the result: local
    /// matches the executor no longer has are removed.
    pub fn list(&mut self, query: Query) -> Ticket {
        self.read(query, FetchPolicy::NetworkOnly, MergePolicy::Replace, true)
    }

    /// Reads with every option.
    pub fn read(&mut self, query: Query, policy: FetchPolicy, merge: MergePolicy, list: bool) -> Ticket {
        let ticket = Ticket::next();
        let local = |store: &Store<T>, q: &Query| -> ReadFinished<T> {
            let started = Instant::now();
            let (ids, page_info) = match store.query(q) {
                Ok(p) => (p.records().map(|r| r.id().clone()).collect(), p.page_info),
                Err(_) => (Vec::new(), Default::default()),
            };
            ReadFinished { ticket, ids, page_info, source: ReadSource::Local, duration: started.elapsed() }
        };
        if policy != FetchPolicy::NetworkOnly {
            let done = local(&self.store, &query);
            self.state.local_reads.push(done);
            if policy == FetchPolicy::CacheOnly {
                return ticket;
            }
        }
        match self.routes.resolve(None, self.state.route.as_deref()) {
            Ok((name, route)) => {
                self.started.write(ReadStarted { ticket, store: T::STORE, route: name.to_owned() });
                let req = QueryRequest { resource: T::STORE.into(), query: query.clone() };
                self.outgoing.query(route.query.clone(), req, self.state.tx.clone(), QueryPurpose::Read(ticket));
                self.state.reads.insert(ticket, PendingRead { query, merge, list, started: Instant::now() });
            }
            Err(asked) => {
                let mut done = local(&self.store, &query);
                done.source = ReadSource::Fallback(crate::protocol::StandardError::adapter(
                    "NO_ROUTE",
                    format!("{}: no route {:?}", T::STORE, asked),
                ));
                self.state.local_reads.push(done);
            }
        }
        ticket
    }
}
