//! The sync engine (seed 004 §7): the `sync` route's executor and its three lanes.
//!
//! - **Writes** commit locally at once (the `local` redb file) and are queued in the durable
//!   outbox in the same transaction — one transaction per frame.
//! - **Push lane**: reserve → push as write ops → ack / reject / retry → write back (the ack's
//!   version and the local record commit with the outbox update, in one transaction).
//! - **Pull lane**: cursor → `changes.pull` → the local file and the cursor advance in one
//!   transaction → the changes go to the stores, which apply them within a per-frame budget.
//!   Single-flight, periodic, and woken by notifications (debounced).
//! - **Notify lane**: an SSE subscription, reconnecting with backoff; each notification wakes
//!   the pull lane.
//!
//! Everything the lanes learn goes to the ECS side as [`SyncOutput`] over a channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use redb::Database;
use serde_json::{Map, Value as Json};
use tokio::sync::Notify;

use super::batch::{RetryPolicy, Transport};
use super::executor::{BoxFuture, Executor, LoadedRecord};
use super::http::HttpTransport;
use super::local::LocalExecutor;
use super::outbox::{self, DeadLetter, OutboxStats, Outcome};
use crate::core::WriteAction;
use crate::protocol::{
    ChangeKind, Meta, OpBody, OpsRequest, PullRequest, PullResult, QueryRequest, QueryResult, RemoteOp, StandardError,
    WireWriteEntry, WriteRequest, WriteResult, now_ms,
};

/// Which lanes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Push, pull and subscribe.
    #[default]
    Full,
    /// Push local writes only.
    PushOnly,
    /// Pull periodically only.
    PullOnly,
    /// Pull, periodically and on notifications.
    PullAndSubscribe,
    /// Listen to notifications only (report them; pull nothing).
    SubscribeOnly,
}

impl SyncMode {
    /// Whether the push lane runs.
    pub fn pushes(self) -> bool {
        matches!(self, SyncMode::Full | SyncMode::PushOnly)
    }
    /// Whether the pull lane runs.
    pub fn pulls(self) -> bool {
        matches!(self, SyncMode::Full | SyncMode::PullOnly | SyncMode::PullAndSubscribe)
    }
    /// Whether the notify lane runs.
    pub fn subscribes(self) -> bool {
        matches!(self, SyncMode::Full | SyncMode::PullAndSubscribe | SyncMode::SubscribeOnly)
    }
}

/// The sync engine's settings.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The server, e.g. `http://127.0.0.1:8787`.
    pub base_url: String,
    /// A bearer token.
    pub token: Option<String>,
    /// Which lanes run.
    pub mode: SyncMode,
    /// Items per push.
    pub push_batch: usize,
    /// Changes per pull.
    pub pull_limit: u32,
    /// Pull at least this often.
    pub pull_interval: Duration,
    /// At most one notification-woken pull per this window: a notification after a quiet
    /// spell pulls at once; later ones within the window (from the end of the last pull)
    /// fold into one pull at its end.
    pub notify_debounce: Duration,
    /// Backoff of failed pushes.
    pub retry: RetryPolicy,
    /// A write that failed this many times becomes a dead letter.
    pub max_attempts: u32,
    /// A pushed item unanswered this long goes back to pending.
    pub in_flight_timeout: Duration,
    /// Backoff of the notify lane's reconnects.
    pub reconnect: RetryPolicy,
}

impl SyncConfig {
    /// Settings for a server, with defaults.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            token: None,
            mode: SyncMode::Full,
            push_batch: 200,
            pull_limit: 500,
            pull_interval: Duration::from_secs(30),
            notify_debounce: Duration::from_millis(20),
            retry: RetryPolicy {
                max_retries: u32::MAX,
                base: Duration::from_millis(200),
                max: Duration::from_secs(30),
            },
            max_attempts: 10,
            in_flight_timeout: Duration::from_secs(60),
            reconnect: RetryPolicy {
                max_retries: u32::MAX,
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
        }
    }
    /// With a bearer token.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = Some(t.into());
        self
    }
    /// With a mode.
    pub fn mode(mut self, m: SyncMode) -> Self {
        self.mode = m;
        self
    }
}

/// How a synced change enters a store.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncChange {
    /// The server confirmed a local write: its version, and its copy when no later local
    /// write of the record is waiting.
    Acked {
        /// The record.
        id: String,
        /// The server version.
        version: u64,
        /// The server's copy.
        value: Option<Map<String, Json>>,
    },
    /// A change from the server (pulled, or its copy after a rejected write).
    Remote {
        /// The record.
        id: String,
        /// The server version.
        version: u64,
        /// The record, or `None` when deleted.
        value: Option<Map<String, Json>>,
    },
}

/// What the sync engine reports (a Bevy message on the ECS side).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "runtime", derive(bevy_ecs::message::Message))]
#[non_exhaustive]
pub enum SyncEvent {
    /// The lanes started.
    Started {
        /// The mode.
        mode: SyncMode,
    },
    /// Local writes were queued in the outbox.
    Enqueued {
        /// How many.
        count: usize,
    },
    /// A push finished.
    Pushed {
        /// Acked items.
        acked: usize,
        /// Rejected items (now dead letters).
        rejected: usize,
        /// Items that will be retried.
        retrying: usize,
    },
    /// A write was rejected (or kept failing) and became a dead letter.
    DeadLettered {
        /// The letter.
        letter: Box<DeadLetter>,
    },
    /// A push failed as a whole (the items wait for a retry).
    PushFailed {
        /// Why.
        error: StandardError,
    },
    /// A pull applied changes.
    Pulled {
        /// How many changes.
        changes: usize,
        /// The new cursor.
        cursor: String,
    },
    /// A pull failed.
    PullFailed {
        /// Why.
        error: StandardError,
    },
    /// The server said something changed.
    Notified {
        /// The resources.
        resources: Vec<String>,
        /// Its newest cursor.
        cursor: String,
    },
    /// The notification stream is open.
    Connected,
    /// The notification stream dropped (it reconnects by itself).
    Disconnected {
        /// Why.
        error: String,
    },
    /// A barrier was reached: every write made before it is acked (or dead) and pulled back.
    BarrierReached {
        /// The barrier.
        id: u64,
    },
    /// A synced record the store could not take: its JSON does not decode into the store's
    /// type, or its inbound / writeback transform refused it. The store keeps what it had for
    /// the record (the local data file holds the server's copy as pulled).
    Undecodable {
        /// The store.
        resource: String,
        /// The record.
        id: String,
        /// Why.
        error: String,
    },
    /// The outbox's counts changed.
    Outbox {
        /// The counts.
        stats: OutboxStats,
        /// The dead letters.
        dead: Vec<DeadLetter>,
    },
}

/// Where a resource's synced changes go, called on the lane's thread (see
/// [`SyncEngine::set_sink`]). Returns the changes it could not take, as (record id, why).
pub type SyncSink = dyn Fn(Vec<SyncChange>) -> Vec<(String, String)> + Send + Sync;

/// What the lanes send the ECS side.
#[derive(Clone, Debug)]
pub enum SyncOutput {
    /// Changes for a store that has no sink ([`SyncEngine::set_sink`]).
    Apply {
        /// The store.
        resource: String,
        /// The changes, in order.
        changes: Vec<SyncChange>,
    },
    /// An event.
    Event(SyncEvent),
}

struct Inner {
    local: LocalExecutor,
    transport: HttpTransport,
    config: SyncConfig,
    resources: Mutex<Vec<String>>,
    /// Where each resource's changes go instead of `out`.
    sinks: Mutex<HashMap<String, Arc<SyncSink>>>,
    out: Sender<SyncOutput>,
    push_wake: Notify,
    pull_wake: Notify,
    pull_done: Notify,
    pulls: AtomicU64,
    acks: Notify,
    next_barrier: AtomicU64,
    stop: AtomicBool,
    started: AtomicBool,
    /// The dead letters as last read, and the outbox's dead-letter generation then: they are
    /// read again only when it changes.
    dead: Mutex<Option<(u64, Vec<DeadLetter>)>>,
}

/// The sync engine and the `sync` route's executor. Clones share one engine.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<Inner>,
}

fn storage(e: impl std::fmt::Display) -> StandardError {
    StandardError::adapter("STORAGE", format!("sync: {e}")).retryable()
}

impl SyncEngine {
    /// An engine over the local data file, reporting to `out`.
    pub fn new(local: LocalExecutor, config: SyncConfig, out: Sender<SyncOutput>) -> Result<Self, StandardError> {
        let transport = HttpTransport::new(&config.base_url, config.token.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                local,
                transport,
                config,
                resources: Mutex::new(Vec::new()),
                sinks: Mutex::new(HashMap::new()),
                out,
                push_wake: Notify::new(),
                pull_wake: Notify::new(),
                pull_done: Notify::new(),
                pulls: AtomicU64::new(0),
                acks: Notify::new(),
                next_barrier: AtomicU64::new(1),
                stop: AtomicBool::new(false),
                started: AtomicBool::new(false),
                dead: Mutex::new(None),
            }),
        })
    }

    /// Syncs this store too.
    pub fn add_resource(&self, name: &str) {
        let mut r = self.inner.resources.lock().unwrap_or_else(|p| p.into_inner());
        if !r.iter().any(|x| x == name) {
            r.push(name.to_owned());
        }
    }

    fn resources(&self) -> Vec<String> {
        self.inner.resources.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn db(&self) -> &Database {
        self.inner.local.database()
    }

    /// Sends this resource's changes to `sink`, called on the lane's thread, instead of as
    /// [`SyncOutput::Apply`]: the ECS side gives each store one that decodes the records
    /// there, so that a large pull's JSON is parsed and freed off the game thread.
    /// Each change it returns as not taken is reported as [`SyncEvent::Undecodable`].
    pub fn set_sink(
        &self,
        resource: &str,
        sink: impl Fn(Vec<SyncChange>) -> Vec<(String, String)> + Send + Sync + 'static,
    ) {
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.insert(resource.to_owned(), Arc::new(sink));
    }

    /// Hands a resource's changes to its sink, or to `out`.
    fn deliver(&self, resource: String, changes: Vec<SyncChange>) {
        let sink = self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner()).get(&resource).cloned();
        match sink {
            Some(sink) => {
                for (id, error) in sink(changes) {
                    self.emit(SyncEvent::Undecodable { resource: resource.clone(), id, error });
                }
            }
            None => {
                let _ = self.inner.out.send(SyncOutput::Apply { resource, changes });
            }
        }
    }

    fn emit(&self, e: SyncEvent) {
        let _ = self.inner.out.send(SyncOutput::Event(e));
    }

    /// Starts the lanes on `rt` (once).
    pub fn start(&self, rt: &tokio::runtime::Handle) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mode = self.inner.config.mode;
        if let Err(e) = outbox::recover(self.db(), i64::MAX) {
            self.emit(SyncEvent::PushFailed { error: e });
        }
        self.emit(SyncEvent::Started { mode });
        self.report_outbox();
        if mode.pushes() {
            let this = self.clone();
            rt.spawn(async move { this.push_lane().await });
        }
        if mode.pulls() {
            let this = self.clone();
            rt.spawn(async move { this.pull_lane().await });
        }
        if mode.subscribes() {
            let this = self.clone();
            rt.spawn(async move { this.notify_lane().await });
        }
    }

    /// Stops the lanes.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.push_wake.notify_one();
        self.inner.pull_wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.inner.stop.load(Ordering::Acquire)
    }

    /// Pushes now.
    pub fn push_now(&self) {
        self.inner.push_wake.notify_one();
    }

    /// Pulls now.
    pub fn pull_now(&self) {
        self.inner.pull_wake.notify_one();
    }

    /// Reports the outbox's counts: a few table lengths, and the dead letters (read again
    /// only when they changed).
    fn report_outbox(&self) {
        let Ok((stats, generation)) = outbox::stats_and_dead_generation(self.db()) else { return };
        let mut cached = self.inner.dead.lock().unwrap_or_else(|p| p.into_inner());
        let dead = match &*cached {
            Some((g, dead)) if *g == generation => dead.clone(),
            _ => {
                // Read after the counts: at least as new as `generation`, so a change after it
                // shows as a new generation next time.
                let Ok(dead) = outbox::dead_letters(self.db()) else { return };
                *cached = Some((generation, dead.clone()));
                dead
            }
        };
        drop(cached);
        self.emit(SyncEvent::Outbox { stats, dead });
    }

    /// Puts a dead letter back in the outbox (`retry`) or drops it.
    pub fn resolve_dead(&self, seq: u64, retry: bool) -> Result<bool, StandardError> {
        let r = outbox::resolve_dead(self.db(), seq, retry)?;
        self.report_outbox();
        if retry {
            self.push_now();
        }
        Ok(r)
    }

    /// A new barrier id; the barrier counts once [`SyncEngine::start_barrier`] runs.
    pub fn new_barrier(&self) -> u64 {
        self.inner.next_barrier.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a barrier: [`SyncEvent::BarrierReached`] comes once every write handed to the
    /// engine before this call is acked (or dead) and a pull that started after that has
    /// finished. The outbox position is read on the local writer thread, after every write
    /// handed over before.
    pub fn start_barrier(&self, id: u64, rt: &tokio::runtime::Handle) {
        let this = self.clone();
        let target = self.inner.local.on_writer(move || outbox::stats(this.db()).map(|s| s.last_seq).unwrap_or(0));
        let this = self.clone();
        rt.spawn(async move {
            let target = target.await.unwrap_or(0);
            loop {
                if this.stopped() {
                    return;
                }
                let oldest = outbox::oldest_seq(this.db()).unwrap_or(None);
                if oldest.is_none_or(|s| s > target) {
                    break;
                }
                this.push_now();
                let _ = tokio::time::timeout(Duration::from_millis(50), this.inner.acks.notified()).await;
            }
            if this.inner.config.mode.pulls() {
                let before = this.inner.pulls.load(Ordering::Acquire);
                loop {
                    this.pull_now();
                    let _ = tokio::time::timeout(Duration::from_millis(100), this.inner.pull_done.notified()).await;
                    // A pull that started after the acks has finished when two more pulls
                    // completed (the one running at `before` may have started earlier).
                    if this.inner.pulls.load(Ordering::Acquire) >= before + 2 || this.stopped() {
                        break;
                    }
                }
            }
            this.emit(SyncEvent::BarrierReached { id });
        });
    }

    async fn push_lane(self) {
        let mut last_recover = now_ms();
        while !self.stopped() {
            let _ = tokio::time::timeout(Duration::from_millis(250), self.inner.push_wake.notified()).await;
            if self.stopped() {
                return;
            }
            let now = now_ms();
            if now - last_recover > self.inner.config.in_flight_timeout.as_millis() as i64 {
                let _ = outbox::recover(self.db(), now - self.inner.config.in_flight_timeout.as_millis() as i64);
                last_recover = now;
            }
            loop {
                let this = self.clone();
                let batch = self.inner.config.push_batch;
                let items = tokio::task::spawn_blocking(move || outbox::reserve(this.db(), batch, now_ms())).await;
                let items = match items {
                    Ok(Ok(items)) => items,
                    Ok(Err(e)) => {
                        self.emit(SyncEvent::PushFailed { error: e });
                        break;
                    }
                    Err(_) => break,
                };
                if items.is_empty() {
                    break;
                }
                self.push(items).await;
                self.inner.acks.notify_waiters();
                if self.stopped() {
                    return;
                }
            }
        }
    }

    /// Pushes reserved items (one write op per resource) and settles them.
    async fn push(&self, items: Vec<outbox::OutboxItem>) {
        let mut by_resource: HashMap<String, Vec<WireWriteEntry>> = HashMap::new();
        for it in &items {
            let mut e = it.entry.clone();
            e.entry_id = it.seq.to_string();
            by_resource.entry(it.resource.clone()).or_default().push(e);
        }
        let ops: Vec<RemoteOp> = by_resource
            .into_iter()
            .enumerate()
            .map(|(i, (resource, entries))| RemoteOp {
                op_id: format!("w{i}"),
                body: OpBody::Write { write: WriteRequest { resource, entries } },
                meta: None,
            })
            .collect();
        let req = OpsRequest { meta: Meta { client_time_ms: Some(now_ms()), ..Meta::v1() }, ops };
        let response = self.inner.transport.send(req, None).await;
        let mut results: HashMap<String, crate::protocol::WriteItemResult> = HashMap::new();
        let mut whole_error = None;
        match response {
            Ok(resp) if resp.ok => {
                for r in resp.data.map(|d| d.results).unwrap_or_default() {
                    if r.ok {
                        if let Some(data) = r.data.and_then(|d| serde_json::from_value::<WriteResult>(d).ok()) {
                            results.extend(data.results.into_iter().map(|x| (x.entry_id.clone(), x)));
                        }
                    } else if let Some(e) = r.error {
                        whole_error = Some(e);
                    }
                }
            }
            Ok(resp) => {
                whole_error =
                    resp.error.or_else(|| Some(StandardError::internal("a rejected request without an error")))
            }
            Err(e) => whole_error = Some(e),
        }
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(items.len());
        // The server's copies of acked records (writes ask for them with `returning`).
        let mut returned: HashMap<u64, Map<String, Json>> = HashMap::new();
        let (mut acked, mut rejected, mut retrying) = (0, 0, 0);
        for it in &items {
            let outcome = match results.remove(&it.seq.to_string()) {
                Some(r) if r.ok => {
                    if let Some(Json::Object(m)) = r.data {
                        returned.insert(it.seq, m);
                    }
                    Outcome::Acked { version: r.version }
                }
                Some(r) => {
                    let error = r.error.unwrap_or_else(|| StandardError::internal("a failed entry without an error"));
                    if error.is_retryable() {
                        Outcome::Retry {
                            retry_at_ms: now + self.inner.config.retry.delay(it.attempts).as_millis() as i64,
                            error,
                        }
                    } else {
                        Outcome::Rejected { error, current: r.current }
                    }
                }
                None => {
                    let error = whole_error
                        .clone()
                        .unwrap_or_else(|| StandardError::internal("the response has no result for this write"));
                    if error.is_retryable() || whole_error.is_none() {
                        Outcome::Retry {
                            retry_at_ms: now + self.inner.config.retry.delay(it.attempts).as_millis() as i64,
                            error,
                        }
                    } else {
                        Outcome::Rejected { error, current: None }
                    }
                }
            };
            match &outcome {
                Outcome::Acked { .. } => acked += 1,
                Outcome::Rejected { .. } => rejected += 1,
                Outcome::Retry { .. } => retrying += 1,
            }
            outcomes.push((it.seq, outcome));
        }
        if let Some(e) = &whole_error
            && acked == 0
        {
            self.emit(SyncEvent::PushFailed { error: e.clone() });
        }
        let this = self.clone();
        let items2 = items.clone();
        // The acked records go to their stores from the blocking task too: their sinks decode
        // JSON, which must not hold up the async workers.
        let settled = tokio::task::spawn_blocking(move || {
            let applies = this.settle(&items2, &outcomes, &returned)?;
            for (resource, changes) in applies {
                this.deliver(resource, changes);
            }
            Ok::<_, StandardError>(())
        })
        .await;
        match settled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.emit(SyncEvent::PushFailed { error: e }),
            Err(_) => {}
        }
        self.emit(SyncEvent::Pushed { acked, rejected, retrying });
        if (rejected > 0 || retrying > 0)
            && let Ok(dead) = outbox::dead_letters(self.db())
        {
            for letter in dead.into_iter().filter(|d| items.iter().any(|i| i.seq == d.item.seq)) {
                self.emit(SyncEvent::DeadLettered { letter: Box::new(letter) });
            }
        }
        self.report_outbox();
    }

    /// Settles outcomes and writes acks and rejections back into the local file, in one
    /// transaction. Returns the changes for the stores.
    ///
    /// Once a record has no more writes in the outbox, its local copy becomes the server's
    /// newest copy known: the one the ack returned, or a change a pull deferred while the
    /// record's writes were waiting (when it is newer), or the server's copy of a rejection.
    fn settle(
        &self,
        items: &[outbox::OutboxItem],
        outcomes: &[(u64, Outcome)],
        returned: &HashMap<u64, Map<String, Json>>,
    ) -> Result<Vec<(String, Vec<SyncChange>)>, StandardError> {
        let txn = self.db().begin_write().map_err(storage)?;
        outbox::settle_in(&txn, outcomes, self.inner.config.max_attempts)?;
        let mut still_queued = outbox::queued_records(&txn)?;
        let by_seq: HashMap<u64, &outbox::OutboxItem> = items.iter().map(|i| (i.seq, i)).collect();
        let mut applies: HashMap<String, Vec<SyncChange>> = HashMap::new();
        for (seq, outcome) in outcomes {
            let Some(it) = by_seq.get(seq) else { continue };
            let waiting = still_queued.contains(&it.resource, &it.entity_id)?;
            let deferred = if waiting { None } else { outbox::take_deferred(&txn, &it.resource, &it.entity_id)? };
            let remote = |version: u64, value: Option<Map<String, Json>>| -> Result<SyncChange, StandardError> {
                self.inner.local.put_in(&txn, &it.resource, &it.entity_id, value.as_ref().map(|v| (v, version)))?;
                Ok(SyncChange::Remote { id: it.entity_id.clone(), version, value })
            };
            let change = match outcome {
                // A change the server made after this write: it wins.
                Outcome::Acked { version: Some(v) } if deferred.as_ref().is_some_and(|d| d.version > *v) => {
                    let Some(d) = deferred else { continue };
                    remote(d.version, d.value)?
                }
                Outcome::Acked { version: Some(v) } => match returned.get(seq).filter(|_| !waiting) {
                    // The server's copy (with the changes of others, e.g. their increments).
                    Some(server) => {
                        self.inner.local.put_in(&txn, &it.resource, &it.entity_id, Some((server, *v)))?;
                        SyncChange::Acked { id: it.entity_id.clone(), version: *v, value: Some(server.clone()) }
                    }
                    None => {
                        // The local copy gets the server version; its value stays (it is what
                        // was pushed, or newer).
                        let value = self.inner.local.set_version_in(&txn, &it.resource, &it.entity_id, *v)?;
                        SyncChange::Acked {
                            id: it.entity_id.clone(),
                            version: *v,
                            value: if waiting { None } else { value },
                        }
                    }
                },
                // An acked delete: a deferred delete is applied (the record may have come back
                // into a store meanwhile); a deferred upsert may be older than the delete.
                Outcome::Acked { version: None } => {
                    outbox::forget_own_versions(&txn, &it.resource, &it.entity_id)?;
                    match deferred {
                        Some(d) if d.value.is_none() => remote(d.version, None)?,
                        _ => continue,
                    }
                }
                Outcome::Rejected { current, .. } if !waiting => {
                    // The server's copy wins (a rejected create: the record goes).
                    let (value, version) = match current {
                        Some(c) => (c.value.clone().and_then(|v| v.as_object().cloned()), c.version.unwrap_or(0)),
                        None => (None, 0),
                    };
                    match deferred {
                        Some(d) if value.is_none() || d.version > version => remote(d.version, d.value)?,
                        _ if value.is_none() && it.entry.action != WriteAction::Create => continue,
                        _ => remote(version, value)?,
                    }
                }
                // A write that became a dead letter by failing: what the pulls deferred.
                _ => match deferred {
                    Some(d) => remote(d.version, d.value)?,
                    None => continue,
                },
            };
            match &change {
                SyncChange::Acked { version, .. } => {
                    outbox::note_own_version(&txn, &it.resource, &it.entity_id, *version)?;
                }
                SyncChange::Remote { .. } => outbox::forget_own_versions(&txn, &it.resource, &it.entity_id)?,
            }
            applies.entry(it.resource.clone()).or_default().push(change);
        }
        drop(still_queued);
        txn.commit().map_err(storage)?;
        Ok(applies.into_iter().collect())
    }

    async fn pull_lane(self) {
        let mut failures = 0u32;
        let mut first = true;
        let mut last_pull = tokio::time::Instant::now();
        while !self.stopped() {
            if !first {
                let _ = tokio::time::timeout(self.inner.config.pull_interval, self.inner.pull_wake.notified()).await;
                // Debounced on the leading edge: a wake after a quiet spell pulls at once (the
                // latency of a change from another client is one pull, not one debounce plus
                // one pull); wakes within `notify_debounce` of the last pull wait out the rest
                // of it, and every notification arriving meanwhile folds into that one pull.
                let since = last_pull.elapsed();
                if since < self.inner.config.notify_debounce {
                    tokio::time::sleep(self.inner.config.notify_debounce - since).await;
                }
            }
            first = false;
            if self.stopped() {
                return;
            }
            let result = self.pull_all().await;
            last_pull = tokio::time::Instant::now();
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    self.emit(SyncEvent::PullFailed { error: e });
                    tokio::time::sleep(self.inner.config.reconnect.delay(failures)).await;
                    failures = failures.saturating_add(1);
                    self.inner.pull_wake.notify_one();
                }
            }
            self.inner.pulls.fetch_add(1, Ordering::AcqRel);
            self.inner.pull_done.notify_waiters();
        }
    }

    async fn pull_all(&self) -> Result<(), StandardError> {
        loop {
            let cursor = outbox::cursor(self.db(), "pull")?;
            let resources = self.resources();
            let req = OpsRequest {
                meta: Meta::v1(),
                ops: vec![RemoteOp {
                    op_id: "p".into(),
                    body: OpBody::Pull {
                        pull: PullRequest {
                            cursor: cursor.clone(),
                            limit: Some(self.inner.config.pull_limit),
                            resources: Some(resources),
                        },
                    },
                    meta: None,
                }],
            };
            let resp = self.inner.transport.send(req, None).await?;
            let result = resp.data.and_then(|d| d.results.into_iter().next()).ok_or_else(|| {
                resp.error.clone().unwrap_or_else(|| StandardError::internal("a pull without a result"))
            })?;
            if !result.ok {
                return Err(result.error.unwrap_or_else(|| StandardError::internal("a failed pull without an error")));
            }
            let pulled: PullResult = serde_json::from_value(result.data.unwrap_or(Json::Null))
                .map_err(|e| StandardError::adapter("BAD_RESPONSE", format!("a pull result did not parse: {e}")))?;
            let n = pulled.changes.len();
            let next = pulled.next_cursor.clone();
            let this = self.clone();
            // Committed, then handed to the stores' sinks (which decode) on the blocking task.
            tokio::task::spawn_blocking(move || {
                for (resource, changes) in this.apply_pulled(pulled)? {
                    this.deliver(resource, changes);
                }
                Ok::<_, StandardError>(())
            })
            .await
            .map_err(|e| StandardError::internal(format!("pull apply task: {e}")))??;
            if n > 0 || next != cursor {
                self.emit(SyncEvent::Pulled { changes: n, cursor: next.clone() });
            }
            if n < self.inner.config.pull_limit as usize || next == cursor {
                return Ok(());
            }
        }
    }

    /// Writes pulled changes and the new cursor into the local file in one transaction.
    /// Records with writes still in the outbox keep their local value.
    fn apply_pulled(&self, pulled: PullResult) -> Result<Vec<(String, Vec<SyncChange>)>, StandardError> {
        let txn = self.db().begin_write().map_err(storage)?;
        let mut queued = outbox::queued_records(&txn)?;
        let mut applies: HashMap<String, Vec<SyncChange>> = HashMap::new();
        for c in pulled.changes {
            let value = match (c.kind, c.value) {
                (ChangeKind::Upsert, Some(Json::Object(m))) => Some(m),
                (ChangeKind::Upsert, _) => continue, // an upsert without its value: nothing to apply
                (ChangeKind::Delete, _) => None,
            };
            if queued.contains(&c.resource, &c.entity_id)? {
                // The cursor moves past it: keep it for when the record's writes are settled.
                outbox::defer(&txn, &c.resource, &c.entity_id, &outbox::Deferred { version: c.version, value })?;
                continue;
            }
            self.inner.local.put_in(&txn, &c.resource, &c.entity_id, value.as_ref().map(|v| (v, c.version)))?;
            if let Some((_, to)) = outbox::own_versions(&txn, &c.resource, &c.entity_id)?
                && (c.version > to || value.is_none())
            {
                // Someone else's change: the local version is no longer this client's own.
                outbox::forget_own_versions(&txn, &c.resource, &c.entity_id)?;
            }
            applies.entry(c.resource).or_default().push(SyncChange::Remote {
                id: c.entity_id,
                version: c.version,
                value,
            });
        }
        drop(queued);
        outbox::set_cursor(&txn, "pull", &pulled.next_cursor)?;
        txn.commit().map_err(storage)?;
        Ok(applies.into_iter().collect())
    }

    async fn notify_lane(self) {
        let mut attempt = 0u32;
        while !self.stopped() {
            let error = match self.subscribe_once(&mut attempt).await {
                Ok(()) => "the stream ended".to_owned(),
                Err(e) => e,
            };
            if self.stopped() {
                return;
            }
            self.emit(SyncEvent::Disconnected { error });
            tokio::time::sleep(self.inner.config.reconnect.delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn subscribe_once(&self, attempt: &mut u32) -> Result<(), String> {
        let mut url = format!("{}/sync/subscribe", self.inner.config.base_url.trim_end_matches('/'));
        let resources = self.resources();
        for (i, r) in resources.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str("resources=");
            url.push_str(r);
        }
        let mut rb = reqwest::Client::new().get(&url).header("accept", "text/event-stream");
        if let Some(t) = &self.inner.config.token {
            rb = rb.bearer_auth(t);
        }
        let mut resp = rb.send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("subscribe answered {}", resp.status()));
        }
        self.emit(SyncEvent::Connected);
        *attempt = 0;
        // Notifications sent while the stream was down are lost: catch up with a pull.
        if self.inner.config.mode.pulls() {
            self.pull_now();
        }
        let mut buf = String::new();
        let mut event = String::new();
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c.map_err(|e| e.to_string())?,
                _ = tokio::time::sleep(Duration::from_secs(60)) => return Err("no heartbeat for 60 s".into()),
            };
            let Some(chunk) = chunk else { return Ok(()) };
            if self.stopped() {
                return Ok(());
            }
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    if event == "sync.notify"
                        && let Ok(n) = serde_json::from_str::<crate::protocol::Notify>(data.trim())
                    {
                        self.emit(SyncEvent::Notified { resources: n.resources, cursor: n.cursor });
                        if self.inner.config.mode.pulls() {
                            self.pull_now();
                        }
                    }
                } else if line.is_empty() {
                    event.clear();
                }
            }
        }
    }
}

impl Executor for SyncEngine {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        self.inner.local.query(req)
    }

    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        let fut = self.write_many(vec![req]);
        Box::pin(async move { fut.await.pop().unwrap_or_else(|| Err(StandardError::internal("no result"))) })
    }

    /// Local-first: the records and their outbox items commit in one transaction.
    fn write_many(&self, reqs: Vec<WriteRequest>) -> BoxFuture<Vec<Result<WriteResult, StandardError>>> {
        let this = self.clone();
        let n = reqs.len();
        // Handed to the local writer thread now, so the frame's writes commit even if the
        // runtime stops right after the flush (on `AppExit`).
        let job = self.inner.local.on_writer(move || {
            let mut reqs = reqs;
            let committed = (|| {
                let txn = this.db().begin_write().map_err(storage)?;
                let mut out = Vec::with_capacity(reqs.len());
                let queued = {
                    let mut queue = outbox::Enqueuer::new(&txn, now_ms())?;
                    for req in &mut reqs {
                        // Each write that applied is queued as it applies, carrying the
                        // record's JSON as just stored (encoded once).
                        let resource = req.resource.clone();
                        let result = this
                            .inner
                            .local
                            .write_local_first_in(&txn, req, |e, stored| queue.push(&resource, e, stored).map(drop))?;
                        out.push(result);
                    }
                    queue.finish()?
                };
                txn.commit().map_err(storage)?;
                Ok::<_, StandardError>((out, queued))
            })();
            // The requests go back to be freed off the writer thread (a frame's thousands of
            // entries are its next transaction's time otherwise).
            (committed, reqs)
        });
        let this = self.clone();
        Box::pin(async move {
            let r = job.await.and_then(|(r, reqs)| {
                drop(reqs);
                r
            });
            match r {
                Ok((results, queued)) => {
                    if queued > 0 {
                        this.emit(SyncEvent::Enqueued { count: queued });
                        this.report_outbox();
                        this.push_now();
                    }
                    results.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err(e); n],
            }
        })
    }

    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        self.inner.local.load(resource)
    }
}

#[cfg(test)]
mod tests;
