//! Handing the frame's requests to the async side (in `Last`): all of a route's writes in one
//! `write_many` call (one redb transaction for `local`).
//!
//! The game thread only queues the frame's work. Turning typed writes into wire entries (the
//! JSON encoding, outbound transforms) happens on the `atoma-flush` thread, which takes the
//! frames' work in order and calls each executor in that order — so a frame never pays for
//! encoding, and executors see frames exactly as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Res, ResMut};
use crossbeam_channel::Sender;

use super::messages::Ticket;
use super::reduce::Inbound;
use crate::io::{Executor, IoRuntime};
use crate::protocol::{QueryRequest, WriteItemResult, WriteRequest, WriteResult};

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

/// Builds a write request off the game thread: the request, and the results of entries that
/// could not be encoded (they fail without reaching the executor).
pub(crate) type Encode = Box<dyn FnOnce() -> (WriteRequest, Vec<WriteItemResult>) + Send + Sync>;

type WriteSlot = (Encode, Sender<Inbound>, u64);
type RouteWrites = (Option<Arc<dyn Executor>>, Vec<WriteSlot>);
type QuerySlot = (Arc<dyn Executor>, QueryRequest, Sender<Inbound>, QueryPurpose);

/// Work to run once the frame's requests were handed to their executors.
pub(crate) type After = Box<dyn FnOnce() + Send + Sync>;

/// What a frame no longer needs, freed on the flush thread (see [`Outgoing::drop_later`]).
type Garbage = Box<dyn Send + Sync>;

/// The frame's requests, sent in `Last`.
#[derive(Resource, Default)]
pub(crate) struct Outgoing {
    writes: Vec<(String, RouteWrites)>,
    queries: Vec<QuerySlot>,
    after: Vec<After>,
    garbage: Vec<Garbage>,
}

impl Outgoing {
    pub fn write(
        &mut self,
        route: String,
        exec: Arc<dyn Executor>,
        encode: Encode,
        reply: Sender<Inbound>,
        batch: u64,
    ) {
        let at = match self.writes.iter().position(|(r, _)| *r == route) {
            Some(i) => i,
            None => {
                self.writes.push((route, (None, Vec::new())));
                self.writes.len() - 1
            }
        };
        let slot = &mut self.writes[at].1;
        slot.0 = Some(exec);
        slot.1.push((encode, reply, batch));
    }

    pub fn query(&mut self, exec: Arc<dyn Executor>, req: QueryRequest, reply: Sender<Inbound>, purpose: QueryPurpose) {
        self.queries.push((exec, req, reply, purpose));
    }

    /// Runs `f` on the flush thread after this frame's requests reached their executors (a
    /// sync barrier must count the frame's writes).
    pub fn after(&mut self, f: After) {
        self.after.push(f);
    }

    /// Frees `g` on the flush thread, after this frame's requests reached their executors.
    /// A commit of thousands of records leaves as many old copies, inverse patches and
    /// answers behind; freeing them (cold memory, tens of thousands of `free` calls) took a
    /// third of a large frame's reduce.
    pub fn drop_later(&mut self, g: impl Send + Sync + 'static) {
        self.garbage.push(Box::new(g));
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.queries.is_empty() && self.after.is_empty() && self.garbage.is_empty()
    }
}

/// Run condition of [`flush`].
pub(crate) fn has_outgoing(out: Res<Outgoing>) -> bool {
    !out.is_empty()
}

/// One frame's work for the flush thread.
struct FrameWork {
    writes: Vec<(String, RouteWrites)>,
    queries: Vec<QuerySlot>,
    after: Vec<After>,
    garbage: Vec<Garbage>,
}

enum Job {
    Frame(FrameWork),
    /// Hand over the tasks started so far (every earlier frame's executor calls were made).
    Drain(std::sync::mpsc::Sender<Vec<tokio::task::JoinHandle<()>>>),
}

/// The `Flush` system: hands the frame's requests to the flush thread.
pub(crate) fn flush(mut out: ResMut<Outgoing>, io: Res<IoRuntimeRes>) {
    let work = FrameWork {
        writes: std::mem::take(&mut out.writes),
        queries: std::mem::take(&mut out.queries),
        after: std::mem::take(&mut out.after),
        garbage: std::mem::take(&mut out.garbage),
    };
    if let Err(crossbeam_channel::SendError(Job::Frame(work))) = io.jobs.send(Job::Frame(work)) {
        // No flush thread (it could not start): run the work here.
        let mut tasks = Vec::new();
        run_frame(io.handle.as_ref(), work, &mut tasks);
    }
}

/// Encodes a frame's writes, calls the executors in order, and starts the tasks that wait for
/// their answers.
fn run_frame(rt: Option<&tokio::runtime::Handle>, work: FrameWork, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    tasks.retain(|h| !h.is_finished());
    let mut spawn = |f: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        if let Some(rt) = rt {
            tasks.push(rt.spawn(f));
        }
    };
    // Every executor that got work this frame hears `end_frame` once, after all of it.
    let mut touched: Vec<Arc<dyn Executor>> = Vec::new();
    let mut touch = |e: &Arc<dyn Executor>| {
        if !touched.iter().any(|t| Arc::ptr_eq(t, e)) {
            touched.push(e.clone());
        }
    };
    for (_route, (exec, slots)) in work.writes {
        let Some(exec) = exec else { continue };
        touch(&exec);
        let mut reqs = Vec::with_capacity(slots.len());
        let mut replies = Vec::with_capacity(slots.len());
        for (encode, tx, batch) in slots {
            // A panicking transform fails its writes (they roll back), not the flush thread.
            let Ok((req, failed)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode)) else {
                let error = crate::protocol::StandardError::internal("encoding the writes for the wire panicked");
                let _ = tx.send(Inbound::Written { batch, result: Err(error) });
                continue;
            };
            if req.entries.is_empty() {
                // Nothing could be encoded: answer at once.
                let _ = tx.send(Inbound::Written {
                    batch,
                    result: Ok(WriteResult { transaction_applied: None, results: failed }),
                });
                continue;
            }
            reqs.push(req);
            replies.push((tx, batch, failed));
        }
        if reqs.is_empty() {
            continue;
        }
        let fut = exec.write_many(reqs);
        spawn(Box::pin(async move {
            let mut results = fut.await.into_iter();
            for (tx, batch, failed) in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(crate::protocol::StandardError::internal("the executor returned fewer results than requests"))
                });
                let result = result.map(|mut r| {
                    r.results.extend(failed);
                    r
                });
                let _ = tx.send(Inbound::Written { batch, result });
            }
        }));
    }
    for (exec, req, tx, purpose) in work.queries {
        touch(&exec);
        let fut = exec.query(req);
        spawn(Box::pin(async move {
            let result = fut.await;
            let msg = match purpose {
                QueryPurpose::Fetch(fetch) => Inbound::Fetched { fetch, result },
                QueryPurpose::Read(ticket) => Inbound::Read { ticket, result },
            };
            let _ = tx.send(msg);
        }));
    }
    for e in touched {
        e.end_frame();
    }
    for f in work.after {
        f();
    }
    drop(work.garbage);
}

/// The plugin's io runtime as a resource, with the flush thread that feeds it.
#[derive(Resource)]
pub struct IoRuntimeRes {
    /// The runtime.
    pub io: IoRuntime,
    handle: Option<tokio::runtime::Handle>,
    jobs: Sender<Job>,
}

impl IoRuntimeRes {
    pub(crate) fn new(io: IoRuntime) -> Self {
        let handle = io.handle();
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        let rt = handle.clone();
        // Without the thread, `flush` runs the work itself (the receiver is dropped, sends fail).
        let _ = std::thread::Builder::new().name("atoma-flush".into()).spawn(move || {
            let mut tasks = Vec::new();
            for job in rx {
                match job {
                    Job::Frame(work) => run_frame(rt.as_ref(), work, &mut tasks),
                    Job::Drain(reply) => {
                        let _ = reply.send(std::mem::take(&mut tasks));
                    }
                }
            }
        });
        Self { io, handle, jobs }
    }

    /// Waits (up to `timeout`) for the requests handed over so far, then stops the runtime.
    pub(crate) fn finish(&mut self, timeout: Duration) {
        let (reply, handles) = std::sync::mpsc::channel();
        let pending = match self.jobs.send(Job::Drain(reply)) {
            Ok(()) => handles.recv_timeout(timeout).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let _ = self.io.block_on(async move {
            let _ = tokio::time::timeout(timeout, async {
                for h in pending {
                    let _ = h.await;
                }
            })
            .await;
        });
        self.io.shutdown(Duration::from_millis(500));
    }
}
