//! Handing the frame's requests to the async side in one go (in `Last`): all of a route's
//! writes in one `write_many` call (one redb transaction for `local`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Res, ResMut};
use crossbeam_channel::Sender;

use super::messages::Ticket;
use super::reduce::Inbound;
use crate::io::{Executor, IoRuntime};
use crate::protocol::{QueryRequest, WriteRequest};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why a query is sent.
pub(crate) enum QueryPurpose {
    /// Bases for parked writes.
    Fetch(u64),
    /// A read.
    Read(Ticket),
}

type WriteSlot = (WriteRequest, Sender<Inbound>, u64);
type RouteWrites = (Option<Arc<dyn Executor>>, Vec<WriteSlot>);
type QuerySlot = (Arc<dyn Executor>, QueryRequest, Sender<Inbound>, QueryPurpose);

/// The frame's requests, sent in `Last`.
#[derive(Resource, Default)]
pub(crate) struct Outgoing {
    writes: HashMap<String, RouteWrites>,
    queries: Vec<QuerySlot>,
}

impl Outgoing {
    pub fn write(
        &mut self,
        route: String,
        exec: Arc<dyn Executor>,
        req: WriteRequest,
        reply: Sender<Inbound>,
        batch: u64,
    ) {
        let slot = self.writes.entry(route).or_insert_with(|| (None, Vec::new()));
        slot.0 = Some(exec);
        slot.1.push((req, reply, batch));
    }

    pub fn query(&mut self, exec: Arc<dyn Executor>, req: QueryRequest, reply: Sender<Inbound>, purpose: QueryPurpose) {
        self.queries.push((exec, req, reply, purpose));
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.queries.is_empty()
    }
}

/// Run condition of [`flush`].
pub(crate) fn has_outgoing(out: Res<Outgoing>) -> bool {
    !out.is_empty()
}

/// The `Flush` system: spawns the frame's requests on the io runtime.
pub(crate) fn flush(mut out: ResMut<Outgoing>, mut io: ResMut<IoRuntimeRes>) {
    io.1.retain(|h| !h.is_finished());
    // Every executor that got work this frame hears `end_frame` once, after all of it.
    let mut touched: Vec<Arc<dyn Executor>> = Vec::new();
    let mut touch = |e: &Arc<dyn Executor>| {
        if !touched.iter().any(|t| Arc::ptr_eq(t, e)) {
            touched.push(e.clone());
        }
    };
    for (_route, (exec, slots)) in out.writes.drain() {
        let Some(exec) = exec else { continue };
        touch(&exec);
        let (reqs, replies): (Vec<WriteRequest>, Vec<(Sender<Inbound>, u64)>) =
            slots.into_iter().map(|(req, tx, batch)| (req, (tx, batch))).unzip();
        let fut = exec.write_many(reqs);
        let h = io.0.spawn(async move {
            let results = fut.await;
            let mut results = results.into_iter();
            for (tx, batch) in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(crate::protocol::StandardError::internal("the executor returned fewer results than requests"))
                });
                let _ = tx.send(Inbound::Written { batch, result });
            }
        });
        io.track(h);
    }
    for (exec, req, tx, purpose) in out.queries.drain(..) {
        touch(&exec);
        let fut = exec.query(req);
        let h = io.0.spawn(async move {
            let result = fut.await;
            let msg = match purpose {
                QueryPurpose::Fetch(fetch) => Inbound::Fetched { fetch, result },
                QueryPurpose::Read(ticket) => Inbound::Read { ticket, result },
            };
            let _ = tx.send(msg);
        });
        io.track(h);
    }
    for e in touched {
        e.end_frame();
    }
}

/// The plugin's io runtime as a resource, with the requests it is running.
#[derive(Resource)]
pub struct IoRuntimeRes(pub IoRuntime, pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl IoRuntimeRes {
    pub(crate) fn new(io: IoRuntime) -> Self {
        Self(io, Vec::new())
    }

    fn track(&mut self, h: Option<tokio::task::JoinHandle<()>>) {
        if let Some(h) = h {
            self.1.push(h);
        }
    }

    /// Waits (up to `timeout`) for the requests handed over so far, then stops the runtime.
    pub(crate) fn finish(&mut self, timeout: std::time::Duration) {
        let pending = std::mem::take(&mut self.1);
        let _ = self.0.block_on(async move {
            let _ = tokio::time::timeout(timeout, async {
                for h in pending {
                    let _ = h.await;
                }
            })
            .await;
        });
        self.0.shutdown(std::time::Duration::from_millis(500));
    }
}
