//! The reduce system of one store: everything that changes the store in a frame — intents,
//! executor acks and rejects (writebacks, rollbacks), fetched bases (hydrates), read results,
//! loaded and pulled records — is folded into one plan and applied as **one commit**.

use std::collections::{HashMap, HashSet, VecDeque};

use bevy_ecs::change_detection::DetectChangesMut;
use bevy_ecs::message::{MessageWriter, Messages};
use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Res, ResMut};
use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value as Json};

use super::config::{StoreConfig, Transforms};
use super::flush::{Outgoing, QueryPurpose};
use super::history::HistoryLog;
use super::messages::{Committed, ReadFinished, ReadSource, Ticket, WriteFailure, WriteIntent, WriteSettled};
use super::metrics::AtomaMetrics;
use super::reads::PendingRead;
use super::route::Routes;
use super::store::Store;
use super::writer::{ensure_key, key_of};
use crate::core::{
    Entry, Filter, IdMap, IdSet, Inverse, Op, OpMeta, Origin, Query, Record, Versions, WriteAction, WriteEntry, reduce,
};
use crate::io::SyncChange;
use crate::protocol::{
    ItemMeta, QueryRequest, QueryResult, StandardError, UpsertOptions, WireWriteEntry, WriteItem, WriteOptions,
    WriteRequest, WriteResult,
};

/// What the async side sends a store.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A write request was answered.
    Written { batch: u64, result: Result<WriteResult, StandardError> },
    /// Records fetched for parked writes.
    Fetched { fetch: u64, result: Result<QueryResult, StandardError> },
    /// A read was answered.
    Read { ticket: Ticket, result: Result<QueryResult, StandardError> },
}

/// A write sent to an executor (or held behind an earlier write of its record) and not yet
/// answered.
struct Flight<T: Record> {
    ticket: Ticket,
    id: T::Id,
    /// Shared by the frame's flights of one route.
    route: std::sync::Arc<str>,
    optimistic: bool,
    /// No server version was known when it was made: an update goes as a loose upsert.
    loose: bool,
    inverse: Option<Inverse<T>>,
    /// The write. Its value moves to the encoder when it is sent (a route that is not
    /// optimistic keeps a copy: it is applied on confirmation).
    write: WriteEntry<T>,
}

/// A store's bookkeeping (not public: game systems see `Store<T>` and messages).
#[derive(Resource)]
pub(crate) struct StoreState<T: Record> {
    pub name: &'static str,
    pub transforms: Transforms<T>,
    pub route: Option<String>,
    pub history_enabled: bool,
    /// Whether records are mirrored as entities (then `mirror_dirty` is drained by the mirror).
    pub mirror: bool,
    pub tx: Sender<Inbound>,
    rx: Receiver<Inbound>,
    /// Writes waiting for a fetch of their record, by fetch.
    parked: HashMap<u64, Vec<WriteIntent<T>>>,
    /// Which fetch each missing id waits on.
    parked_ids: IdMap<T::Id, u64>,
    /// Sent writes, by batch.
    in_flight: HashMap<u64, Vec<Flight<T>>>,
    /// Writes held back until an earlier write of the same record is answered.
    held: IdMap<T::Id, VecDeque<Flight<T>>>,
    /// How many writes of each record are in flight.
    busy: IdMap<T::Id, usize>,
    /// Remote reads waiting for their results.
    pub reads: HashMap<Ticket, PendingRead>,
    /// Ids changed by the last commit.
    pub changed: Vec<T::Id>,
    /// Ids of records whose mirror entity must be refreshed (set by reduce, read by mirror).
    pub mirror_dirty: Vec<T::Id>,
    /// Reads answered from the store without an executor, to publish next reduce.
    pub local_reads: Vec<ReadFinished<T>>,
    /// Where the sync lanes send the store's changes (acks and pulled changes), decoded on
    /// their thread ([`decode_synced`]).
    pub synced_tx: Sender<Vec<Op<T>>>,
    synced_rx: Receiver<Vec<Op<T>>>,
    /// Synced changes not yet applied (a large pull is applied over several frames).
    synced: VecDeque<Op<T>>,
    /// How many synced changes one frame applies at most.
    apply_budget: usize,
}

impl<T: Record> StoreState<T> {
    pub fn new(config: &StoreConfig<T>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (synced_tx, synced_rx) = crossbeam_channel::unbounded();
        Self {
            name: T::STORE,
            transforms: config.transforms.clone(),
            route: config.route.clone(),
            history_enabled: config.history,
            mirror: config.mirror,
            tx,
            rx,
            parked: HashMap::new(),
            parked_ids: IdMap::default(),
            in_flight: HashMap::new(),
            held: IdMap::default(),
            busy: IdMap::default(),
            reads: HashMap::new(),
            changed: Vec::new(),
            mirror_dirty: Vec::new(),
            local_reads: Vec::new(),
            synced_tx,
            synced_rx,
            synced: VecDeque::new(),
            apply_budget: config.apply_budget.max(1),
        }
    }

    fn in_flight_count(&self) -> usize {
        self.in_flight.values().map(Vec::len).sum::<usize>() + self.held.values().map(VecDeque::len).sum::<usize>()
    }
}

/// Run condition: whether the store has anything to do this frame.
pub(crate) fn has_work<T: Record>(state: Res<StoreState<T>>, intents: Res<Messages<WriteIntent<T>>>) -> bool {
    !intents.is_empty()
        || !state.rx.is_empty()
        || !state.local_reads.is_empty()
        || !state.synced.is_empty()
        || !state.synced_rx.is_empty()
}

/// Turns the sync lanes' changes into the store's ops — on the lane's thread, so that a large
/// pull's JSON is decoded (through the writeback or inbound transform) and freed there, not in
/// a frame. Returns the ops and the changes it could not take, as (record id, why).
pub(crate) fn decode_synced<T: Record>(
    changes: Vec<SyncChange>,
    transforms: &Transforms<T>,
) -> (Vec<Op<T>>, Vec<(String, String)>) {
    let mut ops = Vec::with_capacity(changes.len());
    let mut refused = Vec::new();
    for change in changes {
        let (id, version, value, ack) = match change {
            SyncChange::Acked { id, version, value } => (id, version, value, true),
            SyncChange::Remote { id, version, value } => (id, version, value, false),
        };
        let Ok(typed_id) = id.parse::<T::Id>() else {
            refused.push((id, format!("{}: not a valid id", T::STORE)));
            continue;
        };
        let record = match value {
            Some(m) => {
                match from_json::<T>(m, if ack { transforms.writeback.as_ref() } else { transforms.inbound.as_ref() }) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        refused.push((id, e));
                        continue;
                    }
                }
            }
            None => None,
        };
        let id = typed_id;
        ops.push(if ack { Op::Writeback { id, version, record } } else { Op::Remote { id, version, record } });
    }
    (ops, refused)
}

/// Turns a record's JSON (from an executor) into `T`, through the inbound (or writeback)
/// transform.
pub(crate) fn from_json<T: Record>(
    mut m: Map<String, Json>,
    transform: Option<&super::config::Transform<T>>,
) -> Result<T, String> {
    m.remove("version");
    let r: T = if T::ID_FIELD != "id" {
        // The wire's `id` mirrors the record's own id field.
        m.remove("id");
        serde_json::from_value(Json::Object(m)).map_err(|e| format!("{}: {e}", T::STORE))?
    } else {
        // Ids are strings on the wire; a numeric id type wants its number back.
        let numeric = match m.get("id") {
            Some(Json::String(s)) => {
                s.parse::<i64>().ok().map(Json::from).or_else(|| s.parse::<u64>().ok().map(Json::from))
            }
            _ => None,
        };
        match numeric {
            Some(n) => {
                // Tried by reference (no copy of the map): a record whose id is a string of
                // digits falls back to the string.
                let original = m.insert("id".into(), n);
                let v = Json::Object(m);
                match T::deserialize(&v) {
                    Ok(r) => r,
                    Err(_) => {
                        let Json::Object(mut m) = v else { return Err(format!("{}: not an object", T::STORE)) };
                        if let Some(o) = original {
                            m.insert("id".into(), o);
                        }
                        serde_json::from_value(Json::Object(m)).map_err(|e| format!("{}: {e}", T::STORE))?
                    }
                }
            }
            None => serde_json::from_value(Json::Object(m)).map_err(|e| format!("{}: {e}", T::STORE))?,
        }
    };
    match transform {
        Some(t) => t(r),
        None => Ok(r),
    }
}

fn version_of(v: &Json) -> u64 {
    v.get("version").and_then(Json::as_u64).unwrap_or(0)
}

/// A record's wire JSON: its fields, with `id` as a string.
pub(crate) fn to_map<T: Record>(r: &T) -> Result<Map<String, Json>, String> {
    match serde_json::to_value(r) {
        Ok(Json::Object(mut m)) => {
            m.insert("id".into(), Json::String(r.id().to_string()));
            Ok(m)
        }
        Ok(_) => Err(format!("{}: a record must serialize to a JSON object", T::STORE)),
        Err(e) => Err(format!("{}: {e}", T::STORE)),
    }
}

/// The wire form of a write entry (outbound transform applied).
fn to_wire<T: Record>(
    e: &WriteEntry<T>,
    entry_id: String,
    transforms: &Transforms<T>,
    returning: bool,
) -> Result<WireWriteEntry, String> {
    let out = |r: &T| -> Result<Json, String> {
        match &transforms.outbound {
            Some(t) => to_map(&t(r.clone())?).map(Json::Object),
            None => to_map(r).map(Json::Object),
        }
    };
    let meta = ItemMeta { idempotency_key: e.meta.idempotency_key.clone(), client_time_ms: e.meta.client_time_ms };
    let mut options = None;
    let (action, value, ops) = match e.action {
        WriteAction::Create => (WriteAction::Create, e.value.as_deref().map(out).transpose()?, None),
        WriteAction::Update => match &e.merge {
            Some(fields) => {
                options = Some(WriteOptions { merge: Some(true), ..WriteOptions::default() });
                (WriteAction::Update, Some(Json::Object(fields.clone())), None)
            }
            None => (WriteAction::Update, e.value.as_deref().map(out).transpose()?, None),
        },
        WriteAction::Upsert => {
            options = Some(WriteOptions {
                upsert: Some(UpsertOptions { mode: e.upsert_mode.unwrap_or_default() }),
                ..WriteOptions::default()
            });
            (WriteAction::Upsert, e.value.as_deref().map(out).transpose()?, None)
        }
        WriteAction::Delete => (WriteAction::Delete, None, None),
        WriteAction::Patch => (WriteAction::Patch, None, Some(e.patch.clone())),
    };
    // Ask for the stored record back: fields the server sets (owner, defaults) are written
    // back into the store with the ack (not needed when the executor stores what it is sent).
    if returning && action != WriteAction::Delete {
        options.get_or_insert_with(WriteOptions::default).returning = Some(true);
    }
    Ok(WireWriteEntry {
        entry_id,
        action,
        item: WriteItem { entity_id: Some(e.id.to_string()), base_version: e.base_version, value, ops, meta },
        options,
    })
}

/// Gives a held write the record's current version as its base (the earlier write of the
/// record was confirmed, so the version moved on).
fn rebase<T: Record>(f: &mut Flight<T>, version: Option<u64>) {
    let Some(v) = version.filter(|v| *v > 0) else { return };
    let w = &f.write;
    let commutative =
        w.action == WriteAction::Patch && w.base_version.is_none() && w.patch.iter().all(|o| o.is_commutative());
    if w.action == WriteAction::Create || commutative {
        return;
    }
    // A write sent as a loose upsert (no version was known when it was made) stays loose.
    f.write.base_version = Some(v);
}

/// An update of a record no server has confirmed yet cannot name a base version: it goes as
/// a loose upsert.
fn fit_unconfirmed(entry: &mut WireWriteEntry) {
    if matches!(entry.action, WriteAction::Update) {
        // Keep `merge` (a merge update sends only its fields) and `returning`.
        let (merge, returning) = entry.options.as_ref().map_or((None, None), |o| (o.merge, o.returning));
        entry.action = WriteAction::Upsert;
        entry.options = Some(WriteOptions {
            upsert: Some(UpsertOptions { mode: crate::core::UpsertMode::Loose }),
            merge,
            returning,
        });
    }
}

/// A sent write, as the encoder gets it.
struct ToEncode<T: Record> {
    ticket: Ticket,
    loose: bool,
    write: WriteEntry<T>,
}

/// Encodes a store's writes for the wire (on the flush thread): the request, and a failed
/// result for each write that could not be encoded.
fn encode<T: Record>(
    resource: &'static str,
    writes: Vec<ToEncode<T>>,
    transforms: &Transforms<T>,
    stores_as_sent: bool,
) -> (WriteRequest, Vec<crate::protocol::WriteItemResult>) {
    let returning = !stores_as_sent || transforms.writeback.is_some();
    let mut entries = Vec::with_capacity(writes.len());
    let mut failed = Vec::new();
    for mut w in writes {
        ensure_key(&mut w.write.meta, w.ticket);
        let entry_id = w.ticket.0.to_string();
        match to_wire(&w.write, entry_id.clone(), transforms, returning) {
            Ok(mut wire) => {
                if w.loose {
                    fit_unconfirmed(&mut wire);
                }
                entries.push(wire);
            }
            Err(msg) => {
                failed.push(crate::protocol::WriteItemResult::err(entry_id, StandardError::invalid_write(msg), None))
            }
        }
    }
    (WriteRequest { resource: resource.into(), entries }, failed)
}

/// The reduce system of store `T`. See the module docs.
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its dependencies")]
pub(crate) fn reduce_store<T: Record>(
    mut store: ResMut<Store<T>>,
    mut state: ResMut<StoreState<T>>,
    mut intents: ResMut<Messages<WriteIntent<T>>>,
    mut settled: MessageWriter<WriteSettled<T>>,
    mut committed: MessageWriter<Committed<T>>,
    mut read_done: MessageWriter<ReadFinished<T>>,
    routes: Res<Routes>,
    mut outgoing: ResMut<Outgoing>,
    mut metrics: ResMut<AtomaMetrics>,
    mut history: ResMut<HistoryLog<T>>,
) {
    let state = &mut *state;
    let name = state.name;
    let mut ops: Vec<(Op<T>, OpMeta)> = Vec::new();
    // For each op: the ticket to settle when it is a user intent.
    let mut op_tickets: Vec<Option<Ticket>> = Vec::new();
    let mut settle_now: Vec<WriteSettled<T>> = Vec::new();
    let mut reads_done: Vec<ReadDone<T>> = Vec::new();
    let mut releases: Vec<T::Id> = Vec::new();
    let sync_meta = || OpMeta { origin: Origin::Sync, ..OpMeta::default() };
    let table = &store.bypass_change_detection().table;
    let mut leftovers = Leftovers::<T>::default();
    // Nearly every write takes the store's route: resolved once for the frame.
    let store_route_name = state.route.clone();
    let store_route = routes.resolve(None, store_route_name.as_deref());
    let resolve = |op: Option<&str>| match op {
        None => store_route.clone(),
        Some(_) => routes.resolve(op, store_route_name.as_deref()),
    };

    // 1. What the async side sent.
    let inbound: Vec<Inbound> = state.rx.try_iter().collect();
    for msg in inbound {
        match msg {
            Inbound::Written { batch, result } => {
                let Some(flights) = state.in_flight.remove(&batch) else { continue };
                // Results come in entry order; a result out of place is found by its entry id.
                let mut results: Result<Vec<Option<crate::protocol::WriteItemResult>>, StandardError> =
                    result.map(|r| r.results.into_iter().map(Some).collect());
                let mut by_entry: Option<HashMap<u64, usize>> = None;
                ops.reserve(flights.len());
                op_tickets.reserve(flights.len());
                settle_now.reserve(flights.len());
                releases.reserve(flights.len());
                leftovers.writes.reserve(flights.len());
                leftovers.results.reserve(flights.len());
                for (i, f) in flights.into_iter().enumerate() {
                    if let Some(n) = state.busy.get_mut(&f.id) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            state.busy.remove(&f.id);
                        }
                    }
                    releases.push(f.id.clone());
                    let found = match &mut results {
                        // The whole request failed: every entry is rolled back.
                        Err(e) => Some(crate::protocol::WriteItemResult::err(f.ticket.0.to_string(), e.clone(), None)),
                        Ok(list) => {
                            let of = |r: &crate::protocol::WriteItemResult| r.entry_id.parse::<u64>().ok();
                            let at = if list.get(i).and_then(Option::as_ref).and_then(of) == Some(f.ticket.0) {
                                Some(i)
                            } else {
                                let map = by_entry.get_or_insert_with(|| {
                                    list.iter().enumerate().filter_map(|(j, r)| Some((of(r.as_ref()?)?, j))).collect()
                                });
                                map.get(&f.ticket.0).copied()
                            };
                            at.and_then(|j| list.get_mut(j)?.take())
                        }
                    };
                    let r = found.unwrap_or_else(|| {
                        crate::protocol::WriteItemResult::err(
                            f.ticket.0.to_string(),
                            StandardError::internal("the executor's response has no result for this entry"),
                            None,
                        )
                    });
                    settle_flight(state, f, r, &mut ops, &mut op_tickets, &mut settle_now, &mut leftovers);
                }
            }
            Inbound::Fetched { fetch, result } => {
                let Some(parked) = state.parked.remove(&fetch) else { continue };
                state.parked_ids.retain(|_, f| *f != fetch);
                match result {
                    Ok(found) => {
                        let mut entries = Vec::new();
                        for v in found.data {
                            let version = version_of(&v);
                            if let Json::Object(m) = v
                                && let Ok(r) = from_json::<T>(m, state.transforms.inbound.as_ref())
                            {
                                entries.push(Entry::new(r, version));
                            }
                        }
                        ops.push((Op::Hydrate(entries), sync_meta()));
                        op_tickets.push(None);
                        for i in parked {
                            ops.push((i.op, i.meta));
                            op_tickets.push(Some(i.ticket));
                        }
                    }
                    Err(e) => {
                        for i in parked {
                            settle_now.push(WriteSettled {
                                ticket: i.ticket,
                                id: None,
                                result: Err(WriteFailure::Unavailable { store: name, error: e.clone() }),
                            });
                        }
                    }
                }
            }
            Inbound::Read { ticket, result } => {
                let Some(pending) = state.reads.remove(&ticket) else { continue };
                let elapsed = pending.started.elapsed();
                match result {
                    Ok(found) => {
                        let mut ids = Vec::new();
                        let mut seen = HashSet::new();
                        for v in found.data {
                            let version = version_of(&v);
                            let Json::Object(m) = v else { continue };
                            let Ok(r) = from_json::<T>(
                                m,
                                state.transforms.writeback.as_ref().or(state.transforms.inbound.as_ref()),
                            ) else {
                                continue;
                            };
                            let id = r.id().clone();
                            ids.push(id.clone());
                            seen.insert(id.clone());
                            if let Some(op) = pending.merge.op(table.entry(&id), r, version) {
                                ops.push((op, sync_meta()));
                                op_tickets.push(None);
                            }
                        }
                        if pending.list {
                            // A list read aligns deletions: local matches the remote lacks go.
                            if let Ok(q) = (Query { page: None, ..pending.query.clone() }).compile()
                                && let Ok(local) = table.query(&q)
                            {
                                for e in local.items {
                                    let id = e.record.id();
                                    if !seen.contains(id) && e.version > 0 {
                                        ops.push((
                                            Op::Remote { id: id.clone(), version: e.version, record: None },
                                            sync_meta(),
                                        ));
                                        op_tickets.push(None);
                                    }
                                }
                            }
                        }
                        reads_done.push((
                            ticket,
                            ids,
                            found.page_info.unwrap_or_default(),
                            ReadSource::Remote,
                            elapsed,
                        ));
                    }
                    Err(e) => {
                        let local = pending.query.compile().ok().and_then(|q| table.query(&q).ok());
                        let (ids, info) = match local {
                            Some(p) => (p.records().map(|r| r.id().clone()).collect(), p.page_info),
                            None => (Vec::new(), Default::default()),
                        };
                        reads_done.push((ticket, ids, info, ReadSource::Fallback(e), elapsed));
                    }
                }
            }
        }
    }
    // Synced changes, within the frame's budget (a 100,000-change pull never stalls a frame).
    for decoded in state.synced_rx.try_iter() {
        state.synced.extend(decoded);
    }
    let take = state.synced.len().min(state.apply_budget);
    ops.reserve(take);
    op_tickets.reserve(take);
    for op in state.synced.drain(..take) {
        ops.push((op, sync_meta()));
        op_tickets.push(None);
    }

    // 2. The frame's intents. A write to a missing record parks until its fetch returns.
    let mut fetch_now: HashMap<String, (u64, Vec<String>)> = HashMap::new();
    let mut created: IdSet<T::Id> = IdSet::default();
    // Which targets the table holds, in one loop of independent lookups: the processor
    // overlaps their cache misses (and the reducer finds the same entries cached). The
    // intents are read where they are, then drained straight into the ops.
    let present: Vec<bool> = intents
        .get_cursor()
        .read(&intents)
        .map(|i| match &i.op {
            Op::Update { id, .. } | Op::Delete { id, .. } | Op::Patch { id, .. } => table.contains(id),
            _ => false,
        })
        .collect();
    ops.reserve(present.len());
    op_tickets.reserve(present.len());
    metrics.entry(name).intents += present.len() as u64;
    for (intent, present) in intents.drain().zip(present) {
        let target = match &intent.op {
            Op::Update { id, .. } | Op::Delete { id, .. } | Op::Patch { id, .. } => Some(id.clone()),
            Op::Create(r) | Op::Upsert { record: r, .. } => {
                created.insert(r.id().clone());
                None
            }
            _ => None,
        };
        let route = match resolve(intent.meta.route.as_deref()) {
            Ok(r) => r,
            Err(asked) => {
                settle_now.push(WriteSettled {
                    ticket: intent.ticket,
                    id: target,
                    result: Err(WriteFailure::NoRoute { store: name, route: asked }),
                });
                continue;
            }
        };
        if let Some(id) = target {
            let missing = !present && !created.contains(&id);
            if let Some(fetch) = state.parked_ids.get(&id).copied() {
                state.parked.entry(fetch).or_default().push(intent);
                continue;
            }
            if missing {
                if !route.1.policy.implicit_fetch {
                    settle_now.push(WriteSettled {
                        ticket: intent.ticket,
                        id: Some(id.clone()),
                        result: Err(WriteFailure::CacheMiss { store: name, id, route: route.0.to_owned() }),
                    });
                    continue;
                }
                let (fetch, ids) =
                    fetch_now.entry(route.0.to_owned()).or_insert_with(|| (super::flush::next_id(), Vec::new()));
                ids.push(id.to_string());
                state.parked_ids.insert(id, *fetch);
                state.parked.entry(*fetch).or_default().push(intent);
                continue;
            }
        }
        ops.push((intent.op, intent.meta));
        op_tickets.push(Some(intent.ticket));
    }
    for (route_name, (fetch, ids)) in fetch_now {
        if let Some(route) = routes.get(&route_name) {
            metrics.entry(name).cache_miss_fetches += 1;
            let query = Query::filter(Filter::In {
                field: T::ID_FIELD.into(),
                values: ids.into_iter().map(Json::String).collect(),
            });
            outgoing.query(
                route.query.clone(),
                QueryRequest { resource: name.into(), query },
                state.tx.clone(),
                QueryPurpose::Fetch(fetch),
            );
        }
    }

    // Release writes held behind an answered write of the same record.
    let mut to_send: Vec<Flight<T>> = Vec::with_capacity(ops.len());
    for id in releases {
        if state.busy.get(&id).copied().unwrap_or(0) == 0
            && let Some(q) = state.held.get_mut(&id)
            && let Some(mut f) = q.pop_front()
        {
            if q.is_empty() {
                state.held.remove(&id);
            }
            // The version the ack wrote back is applied in this commit: read it from the ops.
            let v = ops.iter().rev().find_map(|(op, _)| match op {
                Op::Writeback { id: wid, version, .. } if *wid == id => Some(*version),
                _ => None,
            });
            rebase(&mut f, v.or_else(|| table.entry(&id).map(|e| e.version)));
            *state.busy.entry(id).or_default() += 1;
            to_send.push(f);
        }
    }

    // Acks that only move a version, of records nothing else in this frame touches, skip the
    // reducer (no copy of the record, no inverse): they are applied with the commit.
    // (Not while history waits for an executor's copy under some write's key.)
    let version_only = if state.history_enabled && history.awaits_copies() {
        Vec::new()
    } else {
        take_version_only(&mut ops, &mut op_tickets)
    };

    if ops.is_empty() && to_send.is_empty() && version_only.is_empty() {
        leftovers.hand_over(&mut outgoing);
        emit(&mut settled, settle_now);
        let mut local = std::mem::take(&mut state.local_reads);
        publish_reads(&mut read_done, reads_done, &mut local);
        metrics.entry(name).in_flight = state.in_flight_count();
        return;
    }

    // 3. One plan, one commit.
    // Validations, and the outbound transform: a write that could not leave is never applied.
    let validators = state.transforms.validate.clone();
    let outbound = state.transforms.outbound.clone();
    let validate = |r: &T| {
        validators.iter().try_for_each(|v| v(r))?;
        match &outbound {
            Some(t) => t(r.clone()).map(drop),
            None => Ok(()),
        }
    };
    let has_validators = !validators.is_empty() || outbound.is_some();
    // History matches an executor's copy to its write by idempotency key; a route that stores
    // what it is sent returns no copy, so its writes need no key there.
    let copies_back = |m: &OpMeta| {
        state.transforms.writeback.is_some()
            || resolve(m.route.as_deref()).map_or(true, |(_, r)| !r.policy.stores_as_sent)
    };
    let op_meta: Vec<OpMeta> = if state.history_enabled {
        ops.iter()
            .zip(&op_tickets)
            .map(|((_, m), ticket)| OpMeta {
                idempotency_key: match ticket {
                    _ if m.origin == Origin::Sync => m.idempotency_key.clone(),
                    Some(t) if copies_back(m) => key_of(m, *t),
                    _ => String::new(),
                },
                client_time_ms: m.client_time_ms,
                origin: m.origin,
                action_id: m.action_id.clone(),
                route: None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let op_ids: Vec<Option<T::Id>> = ops
        .iter()
        .map(|(op, _)| match op {
            Op::Create(r) | Op::Upsert { record: r, .. } => Some(r.id().clone()),
            Op::Update { id, .. } | Op::Delete { id, .. } | Op::Patch { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let plan =
        reduce(table, ops, Versions::Client, has_validators.then_some(&validate as &dyn Fn(&T) -> Result<(), String>));

    // Results the store decided at once.
    let mut ok_ops: Vec<bool> = vec![false; plan.results.len()];
    for (i, r) in plan.results.iter().enumerate() {
        let Some(ticket) = op_tickets[i] else { continue };
        match r {
            Ok(_) => ok_ops[i] = true,
            Err(e) => {
                settle_now.push(WriteSettled {
                    ticket,
                    id: op_ids[i].clone(),
                    result: Err(WriteFailure::Rejected(e.clone())),
                });
            }
        }
    }

    let segments: Vec<usize> = plan.segments.iter().map(|s| s.ops.len()).collect();
    let crate::core::Plan { changes, changed_indexes, inverse, entries, .. } = plan;
    // A large commit runs on a helper thread while this one records history and sends the
    // frame's writes (they touch different state): the second core would otherwise idle
    // meanwhile. History reads the records the commit takes: it gets its own handles.
    let overlap = changes.len() >= OVERLAP_MIN;
    if state.history_enabled && !overlap {
        history.record(&changes, &inverse, &op_meta, &ok_ops);
    }
    let recorded = if state.history_enabled && overlap { changes.clone() } else { Vec::new() };

    // Entries to persist, through their routes; non-optimistic routes apply on confirmation.
    let mut deferred: IdSet<T::Id> = IdSet::default();
    for e in &entries {
        if op_tickets[e.op].is_some()
            && let Ok((_, route)) = resolve(e.meta.route.as_deref())
            && !route.policy.optimistic
        {
            deferred.insert(e.id.clone());
        }
    }
    let (changes, hints): (Vec<_>, Vec<_>) = if deferred.is_empty() {
        (changes, changed_indexes)
    } else {
        changes.into_iter().zip(changed_indexes).filter(|((id, _), _)| !deferred.contains(id)).unzip()
    };
    let mut changed: Vec<T::Id> = changes.iter().map(|(id, _)| id.clone()).collect();

    // The commit, beside history and the sends when large.
    let store_ref = store.bypass_change_detection();
    let changed_ref = &mut changed;
    let commit = move || {
        let bumped = store_ref.table.set_versions(version_only, changed_ref);
        let mut old = Vec::new();
        let applied = !changes.is_empty() || bumped > 0;
        if applied {
            store_ref.table.apply_hinted(changes.into_iter().zip(hints), &mut old);
        }
        (applied, old)
    };
    let sends = || {
        if !recorded.is_empty() {
            history.record(&recorded, &inverse, &op_meta, &ok_ops);
        }
        // Each write's inverse patches (the plan keeps both lists in op order).
        let mut inverse = inverse.into_iter().peekable();
        // The route's name, once per route for the frame's flights.
        let mut route_names: Vec<std::sync::Arc<str>> = Vec::new();
        state.busy.reserve(entries.len());
        for e in entries {
            // A write makes one inverse patch (its record's state before it).
            let mut inverse_of = None;
            while let Some(inv) = inverse.next_if(|i| i.op <= e.op) {
                if inv.op == e.op {
                    inverse_of = Some(inv);
                }
            }
            let Some(ticket) = op_tickets[e.op] else { continue };
            let Ok((route_name, route)) = resolve(e.meta.route.as_deref()) else { continue };
            let id = e.id.clone();
            let flight = Flight {
                ticket,
                id: id.clone(),
                route: match route_names.iter().find(|r| r.as_ref() == route_name) {
                    Some(r) => r.clone(),
                    None => {
                        route_names.push(route_name.into());
                        route_names[route_names.len() - 1].clone()
                    }
                },
                optimistic: route.policy.optimistic,
                loose: e.base_version.is_none() && e.action == WriteAction::Update,
                inverse: inverse_of,
                write: e,
            };
            // A record with a write in flight (or held) holds this one behind it: one map lookup
            // for the common case of a record with nothing in flight.
            let held = !state.held.is_empty() && state.held.contains_key(&id);
            let n = if held { None } else { Some(state.busy.entry(id).or_default()) };
            match n {
                Some(n) if *n == 0 => {
                    *n = 1;
                    to_send.push(flight);
                }
                _ => state.held.entry(flight.id.clone()).or_default().push_back(flight),
            }
        }
        send(state, &routes, &mut outgoing, to_send);
    };
    let ((applied, old), ()) = crate::core::beside(overlap, commit, sends);
    leftovers.entries.extend(old);
    if applied {
        let store = &mut *store;
        store.revision += 1;
        let m = metrics.entry(name);
        m.commits += 1;
        m.index_updates += 1;
        m.last_segments = segments;
        m.records = store.table.len();
        committed.write(Committed { revision: store.revision, changed: changed.clone() });
    }
    if state.mirror {
        state.mirror_dirty.extend(changed.iter().cloned());
    }
    state.changed = changed;
    leftovers.hand_over(&mut outgoing);
    emit(&mut settled, settle_now);
    let mut local = std::mem::take(&mut state.local_reads);
    publish_reads(&mut read_done, reads_done, &mut local);
    metrics.entry(name).in_flight = state.in_flight_count();
}

/// From this many changes, a commit runs on a helper thread beside history and the sends.
const OVERLAP_MIN: usize = if cfg!(debug_assertions) { 16 } else { 2048 };

/// Takes out of `ops` the writebacks that carry no record, of records no other op touches.
fn take_version_only<T: Record>(
    ops: &mut Vec<(Op<T>, OpMeta)>,
    tickets: &mut Vec<Option<Ticket>>,
) -> Vec<(T::Id, u64)> {
    if !ops.iter().any(|(op, _)| matches!(op, Op::Writeback { record: None, .. })) {
        return Vec::new();
    }
    // Sized once: these run over a large ack frame's thousands of ops.
    let mut uses: IdMap<T::Id, u32> = IdMap::with_capacity_and_hasher(ops.len(), Default::default());
    for (op, _) in ops.iter() {
        let mut count = |id: &T::Id| *uses.entry(id.clone()).or_default() += 1;
        match op {
            Op::Hydrate(entries) => entries.iter().for_each(|e| count(e.record.id())),
            op => op.target().into_iter().for_each(count),
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    let mut kept_ops = Vec::with_capacity(ops.len());
    let mut kept_tickets = Vec::with_capacity(tickets.len());
    for ((op, meta), ticket) in ops.drain(..).zip(tickets.drain(..)) {
        match op {
            Op::Writeback { id, version, record: None } if ticket.is_none() && uses.get(&id) == Some(&1) => {
                out.push((id, version))
            }
            op => {
                kept_ops.push((op, meta));
                kept_tickets.push(ticket);
            }
        }
    }
    *ops = kept_ops;
    *tickets = kept_tickets;
    out
}

fn emit<T: Record>(w: &mut MessageWriter<WriteSettled<T>>, v: Vec<WriteSettled<T>>) {
    if !v.is_empty() {
        w.write_batch(v);
    }
}

type ReadDone<T> = (Ticket, Vec<<T as crate::core::Keyed>::Id>, crate::core::PageInfo, ReadSource, std::time::Duration);

fn publish_reads<T: Record>(
    w: &mut MessageWriter<ReadFinished<T>>,
    done: Vec<ReadDone<T>>,
    local: &mut Vec<ReadFinished<T>>,
) {
    for m in local.drain(..) {
        w.write(m);
    }
    for (ticket, ids, page_info, source, duration) in done {
        w.write(ReadFinished { ticket, ids, page_info, source, duration });
    }
}

/// Hands flights to their routes' executors (in `Last`, through `Outgoing`); they are encoded
/// for the wire off the game thread.
fn send<T: Record>(state: &mut StoreState<T>, routes: &Routes, outgoing: &mut Outgoing, flights: Vec<Flight<T>>) {
    let by_route: Vec<(std::sync::Arc<str>, Vec<Flight<T>>)> = match flights.first() {
        // Usually every write of a frame takes the store's route: one group, no copying.
        Some(first) if flights.iter().all(|f| f.route == first.route) => vec![(first.route.clone(), flights)],
        _ => {
            let mut by_route: Vec<(std::sync::Arc<str>, Vec<Flight<T>>)> = Vec::new();
            for f in flights {
                match by_route.iter_mut().find(|(r, _)| *r == f.route) {
                    Some((_, v)) => v.push(f),
                    None => by_route.push((f.route.clone(), vec![f])),
                }
            }
            by_route
        }
    };
    for (route_name, mut flights) in by_route {
        let Some(route) = routes.get(&route_name) else { continue };
        let batch = super::flush::next_id();
        // The ack matches its write by idempotency key only where the executor sends a copy
        // back (history pairs the two): elsewhere the key moves to the encoder.
        let keeps_key = !route.policy.stores_as_sent || state.transforms.writeback.is_some();
        let writes: Vec<ToEncode<T>> = flights
            .iter_mut()
            .map(|f| {
                // An optimistic write's value is in the store already: the flight needs no copy.
                let value = if f.optimistic { f.write.value.take() } else { f.write.value.clone() };
                // A sent write's merge fields and patch ops are not needed again.
                let (merge, patch) = (f.write.merge.take(), std::mem::take(&mut f.write.patch));
                let meta = if keeps_key {
                    // The ack's writeback carries the key back to history.
                    ensure_key(&mut f.write.meta, f.ticket);
                    f.write.meta.clone()
                } else {
                    std::mem::take(&mut f.write.meta)
                };
                let w = &f.write;
                ToEncode {
                    ticket: f.ticket,
                    loose: f.loose,
                    write: WriteEntry {
                        op: w.op,
                        action: w.action,
                        id: w.id.clone(),
                        base_version: w.base_version,
                        value,
                        merge,
                        patch,
                        upsert_mode: w.upsert_mode,
                        meta,
                    },
                }
            })
            .collect();
        let transforms = state.transforms.clone();
        let resource = state.name;
        let as_sent = route.policy.stores_as_sent;
        let encode: super::flush::Encode = Box::new(move || encode(resource, writes, &transforms, as_sent));
        outgoing.write(route_name.to_string(), route.write.clone(), encode, state.tx.clone(), batch);
        state.in_flight.insert(batch, flights);
    }
}

/// What a frame's reduce leaves behind — the records a commit replaced, settled writes and
/// their answers — freed on the flush thread instead of in the frame.
struct Leftovers<T: Record> {
    entries: Vec<Entry<T>>,
    writes: Vec<(Option<Inverse<T>>, WriteEntry<T>)>,
    results: Vec<crate::protocol::WriteItemResult>,
}

impl<T: Record> Default for Leftovers<T> {
    fn default() -> Self {
        Self { entries: Vec::new(), writes: Vec::new(), results: Vec::new() }
    }
}

impl<T: Record> Leftovers<T> {
    fn hand_over(self, outgoing: &mut Outgoing) {
        if !(self.entries.is_empty() && self.writes.is_empty() && self.results.is_empty()) {
            outgoing.drop_later(self);
        }
    }
}

/// Settles one answered flight: writeback on success; rollback (and the executor's current
/// copy) on failure.
fn settle_flight<T: Record>(
    state: &mut StoreState<T>,
    mut f: Flight<T>,
    mut r: crate::protocol::WriteItemResult,
    ops: &mut Vec<(Op<T>, OpMeta)>,
    op_tickets: &mut Vec<Option<Ticket>>,
    settle_now: &mut Vec<WriteSettled<T>>,
    leftovers: &mut Leftovers<T>,
) {
    let name = state.name;
    let sync_meta = || OpMeta { origin: Origin::Sync, ..OpMeta::default() };
    if r.ok {
        // The executor's copy replaces the optimistic value (it carries fields the server
        // set) — unless an outbound transform shaped it and no writeback transform turns it
        // back: then the game's value stays and only the version is written back.
        let takes_copy = state.transforms.writeback.is_some() || state.transforms.outbound.is_none();
        // A later write of the record is held behind this one: its optimistic value stays
        // until its own ack (only the version is written back now).
        let takes_copy = takes_copy && !state.held.contains_key(&f.id);
        // The writeback carries the write's key: history matches it to the action.
        let ack_meta = OpMeta {
            origin: Origin::Sync,
            idempotency_key: std::mem::take(&mut f.write.meta.idempotency_key),
            ..OpMeta::default()
        };
        let record = r
            .data
            .take()
            .filter(|_| takes_copy || !f.optimistic)
            .and_then(|d| match d {
                Json::Object(m) => from_json::<T>(m, state.transforms.writeback.as_ref()).ok(),
                _ => None,
            })
            .or_else(|| if f.optimistic { None } else { f.write.value.as_deref().cloned() });
        match (r.version, f.write.action) {
            (_, WriteAction::Delete) => {
                if !f.optimistic {
                    ops.push((Op::Remote { id: f.id.clone(), version: u64::MAX, record: None }, sync_meta()));
                    op_tickets.push(None);
                }
            }
            (Some(version), _) if f.optimistic => {
                ops.push((Op::Writeback { id: f.id.clone(), version, record }, ack_meta));
                op_tickets.push(None);
            }
            (Some(version), _) => {
                ops.push((Op::Remote { id: f.id.clone(), version, record }, ack_meta));
                op_tickets.push(None);
            }
            (None, _) => {}
        }
        settle_now.push(WriteSettled { ticket: f.ticket, id: Some(f.id), result: Ok(r.version) });
        leftovers.writes.push((f.inverse, f.write));
        leftovers.results.push(r);
        return;
    }
    let error = r.error.unwrap_or_else(|| StandardError::internal("a failed result without an error"));
    // Roll back this write (and every write of the record held behind it).
    if f.optimistic {
        for inv in f.inverse.iter().rev() {
            ops.push((Op::Restore { id: inv.id.clone(), entry: inv.prev.clone() }, sync_meta()));
            op_tickets.push(None);
        }
    }
    if let Some(held) = state.held.remove(&f.id) {
        for h in held.into_iter().rev() {
            if h.optimistic {
                for inv in h.inverse.iter().rev() {
                    ops.push((Op::Restore { id: inv.id.clone(), entry: inv.prev.clone() }, sync_meta()));
                    op_tickets.push(None);
                }
            }
            settle_now.push(WriteSettled {
                ticket: h.ticket,
                id: Some(h.id),
                result: Err(WriteFailure::Unavailable {
                    store: name,
                    error: StandardError::conflict("an earlier write of this record failed"),
                }),
            });
        }
    }
    let current = r.current.and_then(|c| {
        let version = c.version.unwrap_or(0);
        match c.value {
            Some(Json::Object(m)) => {
                from_json::<T>(m, state.transforms.inbound.as_ref()).ok().map(|r| Entry::new(r, version))
            }
            _ => None,
        }
    });
    if let Some(cur) = &current {
        // The executor's copy wins: write it back (after the rollback).
        ops.push((Op::Restore { id: f.id.clone(), entry: Some(cur.clone()) }, sync_meta()));
        op_tickets.push(None);
    }
    let failure = if error.is_retryable() || error.kind == crate::protocol::ErrorKind::Adapter {
        WriteFailure::Unavailable { store: name, error }
    } else {
        WriteFailure::Remote { store: name, error, current: current.map(Box::new) }
    };
    settle_now.push(WriteSettled { ticket: f.ticket, id: Some(f.id), result: Err(failure) });
}
