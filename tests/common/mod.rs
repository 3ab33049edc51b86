//! Shared set-up for the headless `App` tests.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::time::{Duration, Instant};

use atoma::io::{BoxFuture, Executor, MemoryExecutor};
use atoma::prelude::*;
use atoma::protocol::{QueryRequest, QueryResult, StandardError, WriteRequest, WriteResult};
use bevy_app::App;
use bevy_ecs::message::Messages;
use serde::{Deserialize, Serialize};

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "players")]
pub struct Player {
    pub id: u32,
    pub name: String,
    pub level: i64,
    #[serde(default)]
    pub gold: i64,
    #[serde(default)]
    pub guild: Option<String>,
}

pub fn player(id: u32, name: &str, level: i64) -> Player {
    Player { id, name: name.into(), level, gold: 0, guild: None }
}

/// A headless app with the plugin, finished and cleaned up, ready for `update()`.
pub fn app(plugin: AtomaPlugin, setup: impl FnOnce(&mut App)) -> App {
    let mut app = App::new();
    app.add_plugins(plugin);
    setup(&mut app);
    app.finish();
    app.cleanup();
    app
}

/// Runs frames until `done` holds (answers from the io thread take a moment), at most 5 s.
pub fn run_until(app: &mut App, mut done: impl FnMut(&mut App) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        app.update();
        if done(app) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Every `WriteSettled<T>` written so far (drained).
pub fn settled<T: atoma::core::Record>(app: &mut App) -> Vec<WriteSettled<T>> {
    app.world_mut().resource_mut::<Messages<WriteSettled<T>>>().drain().collect()
}

/// Runs frames until `n` results have settled; returns them.
pub fn settle<T: atoma::core::Record>(app: &mut App, n: usize) -> Vec<WriteSettled<T>> {
    let mut out = Vec::new();
    run_until(app, |app| {
        out.extend(settled::<T>(app));
        out.len() >= n
    });
    out
}

/// A remote-style executor over a `MemoryExecutor`: it keeps nothing locally, so stores on
/// its route start empty and writes to missing records fetch their base.
#[derive(Clone, Default)]
pub struct Remote(pub MemoryExecutor);

impl Executor for Remote {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        self.0.query(req)
    }
    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        self.0.write(req)
    }
}

/// An executor that fails every call (an unreachable backend).
pub struct Down;

impl Executor for Down {
    fn query(&self, _: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        Box::pin(async { Err(StandardError::adapter("NETWORK", "backend unreachable").retryable()) })
    }
    fn write(&self, _: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        Box::pin(async { Err(StandardError::adapter("NETWORK", "backend unreachable").retryable()) })
    }
}

/// Puts records straight into a memory executor (as another client would have).
pub fn seed_remote(exec: &MemoryExecutor, records: &[Player]) {
    use atoma::protocol::{ItemMeta, WireWriteEntry, WriteItem};
    let entries = records
        .iter()
        .enumerate()
        .map(|(i, p)| WireWriteEntry {
            entry_id: format!("s{i}"),
            action: atoma::core::WriteAction::Create,
            item: WriteItem {
                entity_id: Some(p.id.to_string()),
                base_version: None,
                value: Some({
                    let mut v = serde_json::to_value(p).expect("serializes");
                    v["id"] = serde_json::Value::String(p.id.to_string());
                    v
                }),
                ops: None,
                meta: ItemMeta { idempotency_key: format!("seed-{}", p.id), client_time_ms: 0 },
            },
            options: None,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let r = rt.block_on(exec.write(WriteRequest { resource: "players".into(), entries })).expect("seeded");
    assert!(r.results.iter().all(|r| r.ok), "{r:?}");
}

pub mod proxy;
pub mod server;
