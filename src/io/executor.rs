//! The executor trait and the runtime that drives executors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::protocol::{QueryRequest, QueryResult, StandardError, WriteRequest, WriteResult};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A record loaded at start-up: its JSON (with `id`) and version.
pub type LoadedRecord = (serde_json::Map<String, serde_json::Value>, u64);

/// Runs queries and writes for a route: in memory, in a redb file, over HTTP, through the sync
/// outbox — or anything a game registers.
///
/// Executors speak the protocol's shapes (JSON records with versions) so that one executor
/// serves every store. Their futures run on the plugin's tokio runtime, never in a system.
pub trait Executor: Send + Sync + 'static {
    /// Runs a query.
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>>;

    /// Applies write entries in order; one result per entry. An `Err` means none was applied.
    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>>;

    /// Applies several write requests — a frame's writes to several stores — as one unit where
    /// the executor can (the `local` executor: one redb transaction). Default: one by one.
    fn write_many(&self, reqs: Vec<WriteRequest>) -> BoxFuture<Vec<Result<WriteResult, StandardError>>> {
        let futs: Vec<_> = reqs.into_iter().map(|r| self.write(r)).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(futs.len());
            for f in futs {
                out.push(f.await);
            }
            out
        })
    }

    /// Called once at the end of every frame, after the frame's requests were handed over:
    /// an executor that coalesces (the `http` batch engine) sends them now.
    fn end_frame(&self) {}

    /// Every record of a resource, for loading a store at start-up. `None`: this executor
    /// keeps nothing locally (a remote one), so there is nothing to load.
    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        let _ = resource;
        None
    }
}

/// The tokio runtime the plugin owns. Shut down (with a timeout) when the app exits.
pub struct IoRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    /// A multi-thread runtime with `workers` threads.
    pub fn new(workers: usize) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("atoma-io")
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    /// A runtime that runs nothing (when threads could not be started).
    pub fn disabled() -> Self {
        Self { rt: None }
    }

    /// Spawns a future on the runtime; `None` when the runtime is not running.
    pub fn spawn<F>(&self, f: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.as_ref().map(|rt| rt.spawn(f))
    }

    /// The runtime's handle.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.rt.as_ref().map(|r| r.handle().clone())
    }

    /// Runs a future to completion (start-up only, never from a system).
    pub fn block_on<F: Future>(&self, f: F) -> Option<F::Output> {
        self.rt.as_ref().map(|rt| rt.block_on(f))
    }

    /// Stops the runtime, giving tasks up to `timeout` to finish.
    pub fn shutdown(&mut self, timeout: std::time::Duration) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(timeout);
        }
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropped from async code: blocking here would panic.
                rt.shutdown_background();
            } else {
                // Tasks are cancelled; the threads (and what their tasks held, such as the data
                // file) are released before this returns.
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
            }
        }
    }
}

impl<E: Executor + ?Sized> Executor for Arc<E> {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        (**self).query(req)
    }
    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        (**self).write(req)
    }
    fn write_many(&self, reqs: Vec<WriteRequest>) -> BoxFuture<Vec<Result<WriteResult, StandardError>>> {
        (**self).write_many(reqs)
    }
    fn end_frame(&self) {
        (**self).end_frame()
    }
    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        (**self).load(resource)
    }
}
