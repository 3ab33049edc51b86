//! `AtomaPlugin`, the system sets, and `app.add_store::<T>(…)`.

use std::path::PathBuf;
use std::time::Duration;

use bevy_app::{App, AppExit, Last, Plugin, PostUpdate, PreUpdate};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{IntoScheduleConfigs, SystemCondition};

use super::config::StoreConfig;
use super::flush::{IoRuntimeRes, Outgoing, flush, has_outgoing};
use super::history::HistoryLog;
use super::live::{LiveQuery, refresh_live};
use super::messages::{Committed, ReadFinished, ReadStarted, WriteIntent, WriteSettled};
use super::metrics::AtomaMetrics;
use super::reduce::{StoreState, from_json, has_work, reduce_store};
use super::route::{Route, RoutePolicy, Routes};
use super::store::Store;
use super::sync::{SyncLink, SyncStatus, receive_sync, start_barriers};
use crate::core::{Entry, Record, Table};
use crate::io::{
    BatchConfig, BoxFuture, Executor, HttpExecutor, IoRuntime, LocalExecutor, MemoryExecutor, SyncConfig, SyncEngine,
    SyncEvent,
};
use crate::protocol::{QueryRequest, QueryResult, StandardError, WriteRequest, WriteResult};

/// atoma's system sets, in frame order.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub enum AtomaSystems {
    /// `PreUpdate`: answers from the async side are waiting in per-store channels (the reduce
    /// systems drain them).
    Receive,
    /// `PostUpdate`, first: changes game systems made to mirrored entities become intents.
    Capture,
    /// `PostUpdate`, after `Capture`: one reduce system per store folds the frame into one commit.
    Reduce,
    /// `PostUpdate`, after `Reduce`: live queries and mirrored entities catch up.
    Publish,
    /// `Last`: the frame's requests go to the async side in one go.
    Flush,
}

/// Problems found at start-up (a data file that would not open, a seed file that would not
/// parse, records that would not load). Stores affected report errors on every write.
#[derive(Resource, Debug, Default, Clone)]
pub struct AtomaStatus {
    /// Each problem, said plainly.
    pub errors: Vec<String>,
}

/// Adds atoma to an app. The default keeps stores in `data/atoma.redb` (route `local`).
///
/// ```no_run
/// use bevy_app::App;
/// use atoma::prelude::*;
/// App::new().add_plugins(AtomaPlugin::default().data_dir("saves"));
/// ```
pub struct AtomaPlugin {
    data_dir: PathBuf,
    file: String,
    default_route: String,
    workers: usize,
    in_memory: bool,
    routes: Vec<(String, Route)>,
    http: Vec<(String, HttpRoute)>,
    sync: Option<SyncConfig>,
    local: Option<LocalExecutor>,
}

/// An `http` route: a server speaking the protocol, reached through the batch engine.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    /// The server, e.g. `http://127.0.0.1:8787`.
    pub base_url: String,
    /// A bearer token.
    pub token: Option<String>,
    /// The batch engine's settings.
    pub batch: BatchConfig,
    /// The route's policy.
    pub policy: RoutePolicy,
}

impl HttpRoute {
    /// A route to `base_url` with default settings.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), token: None, batch: BatchConfig::default(), policy: RoutePolicy::default() }
    }
    /// With a bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// With batch settings.
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }
    /// With a policy.
    pub fn policy(mut self, policy: RoutePolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl Default for AtomaPlugin {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            file: "atoma.redb".into(),
            default_route: "local".into(),
            workers: 1,
            in_memory: false,
            routes: Vec::new(),
            http: Vec::new(),
            sync: None,
            local: None,
        }
    }
}

impl AtomaPlugin {
    /// Keeps nothing on disk: the default route is `memory` (for tests and tools).
    pub fn in_memory() -> Self {
        Self { in_memory: true, default_route: "memory".into(), ..Self::default() }
    }
    /// The folder of the data file (default `data`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }
    /// The data file's name (default `atoma.redb`).
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file = name.into();
        self
    }
    /// The route stores use unless they name one (default `local`).
    pub fn default_route(mut self, name: impl Into<String>) -> Self {
        self.default_route = name.into();
        self
    }
    /// Registers a route.
    pub fn route(mut self, name: impl Into<String>, route: Route) -> Self {
        self.routes.push((name.into(), route));
        self
    }
    /// Registers an `http` route to a server (built on the plugin's io runtime).
    pub fn http(mut self, name: impl Into<String>, route: HttpRoute) -> Self {
        self.http.push((name.into(), route));
        self
    }
    /// Adds the `sync` route: local-first writes (the `local` data file) with a durable
    /// outbox, pushed to and pulled from the server in `config`. Stores on route `sync` are
    /// synced. Needs the data file (not [`AtomaPlugin::in_memory`]).
    pub fn sync(mut self, config: SyncConfig) -> Self {
        self.sync = Some(config);
        self
    }
    /// Threads of the io runtime (default 1).
    pub fn io_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Opens the data file now, so that a game can show an error before starting.
    pub fn open(mut self) -> Result<Self, crate::io::OpenError> {
        if !self.in_memory {
            self.local = Some(LocalExecutor::open(self.data_dir.join(&self.file))?);
        }
        Ok(self)
    }
}

/// Stands in for an executor that failed to start: every call reports why.
struct Broken(StandardError);

impl Executor for Broken {
    fn query(&self, _: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
    fn write(&self, _: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
}

impl Plugin for AtomaPlugin {
    fn build(&self, app: &mut App) {
        let mut status = AtomaStatus::default();
        let io = IoRuntime::new(self.workers).unwrap_or_else(|e| {
            status.errors.push(format!("atoma: could not start the io runtime: {e}"));
            IoRuntime::disabled()
        });
        let mut routes = Routes::default();
        routes.insert("memory", Route::new(MemoryExecutor::new()).with_policy(RoutePolicy::default().stores_as_sent()));
        if !self.in_memory {
            let local = match &self.local {
                Some(l) => Ok(l.clone()),
                None => LocalExecutor::open(self.data_dir.join(&self.file)),
            };
            match local {
                Ok(l) => {
                    if let Some(config) = &self.sync {
                        let (tx, rx) = crossbeam_channel::unbounded();
                        match SyncEngine::new(l.clone(), config.clone(), tx) {
                            Ok(engine) => {
                                // An outbox forbids fetching a missing record for a write. Not
                                // `stores_as_sent`: the server answers a push with its copy (a
                                // commutative patch merged with other clients' ones, fields it sets).
                                let policy =
                                    RoutePolicy { optimistic: true, implicit_fetch: false, stores_as_sent: false };
                                routes.insert("sync", Route::new(engine.clone()).with_policy(policy));
                                app.insert_resource(SyncLink { engine, rx, started: false, barriers: Vec::new() })
                                    .init_resource::<SyncStatus>()
                                    .add_message::<SyncEvent>()
                                    .add_systems(
                                        PreUpdate,
                                        receive_sync.run_if(super::sync::has_sync_output).in_set(AtomaSystems::Receive),
                                    )
                                    .add_systems(
                                        Last,
                                        start_barriers
                                            .run_if(super::sync::has_barriers)
                                            .before(flush)
                                            .in_set(AtomaSystems::Flush),
                                    );
                            }
                            Err(e) => status.errors.push(format!("sync: {e}")),
                        }
                    }
                    routes.insert("local", Route::new(l).with_policy(RoutePolicy::default().stores_as_sent()))
                }
                Err(e) => {
                    status.errors.push(e.to_string());
                    let broken = Broken(StandardError::adapter("DATA_FILE", e.to_string()));
                    routes.insert(
                        "local",
                        Route::new(broken).with_policy(RoutePolicy {
                            optimistic: false,
                            implicit_fetch: false,
                            stores_as_sent: false,
                        }),
                    );
                }
            }
        }
        for (name, spec) in &self.http {
            let exec = match io.handle() {
                Some(h) => HttpExecutor::new(&spec.base_url, spec.token.clone(), spec.batch.clone(), h),
                None => Err(StandardError::adapter("NO_RUNTIME", "the io runtime is not running")),
            };
            match exec {
                Ok(e) => routes.insert(name.clone(), Route::new(e).with_policy(spec.policy)),
                Err(e) => {
                    status.errors.push(format!("route {name}: {e}"));
                    routes.insert(name.clone(), Route::new(Broken(e)).with_policy(spec.policy));
                }
            }
        }
        for (name, route) in &self.routes {
            routes.insert(name.clone(), route.clone());
        }
        routes.set_default(self.default_route.clone());
        app.insert_resource(routes)
            .insert_resource(IoRuntimeRes::new(io))
            .insert_resource(status)
            .init_resource::<Outgoing>()
            .init_resource::<AtomaMetrics>()
            .add_message::<ReadStarted>()
            .configure_sets(PreUpdate, AtomaSystems::Receive)
            .configure_sets(PostUpdate, (AtomaSystems::Capture, AtomaSystems::Reduce, AtomaSystems::Publish).chain())
            .configure_sets(Last, AtomaSystems::Flush)
            // Each system runs only when it has work: under Bevy's multi-threaded executor a system
            // that runs costs a task and a thread wake-up every frame (≈ 25 µs on an idle app).
            .add_systems(
                Last,
                (flush.run_if(has_outgoing), shutdown_on_exit.run_if(on_message::<AppExit>))
                    .chain()
                    .in_set(AtomaSystems::Flush),
            );
    }
}

/// On `AppExit`: the frame's writes were just flushed; wait (up to 5 s) for them to land,
/// then stop the io runtime and the sync lanes.
fn shutdown_on_exit(mut exit: MessageReader<AppExit>, mut io: ResMut<IoRuntimeRes>, link: Option<Res<SyncLink>>) {
    if exit.read().next().is_some() {
        if let Some(link) = link {
            link.engine.stop();
        }
        io.finish(Duration::from_secs(5));
    }
}

/// Registering stores on an `App`.
pub trait AtomaAppExt {
    /// Registers store `T`: a `Store<T>` resource, its reduce system, its messages. Loads its
    /// records from its route's executor (the `local` data file) and its seed file, if any.
    fn add_store<T: Record>(&mut self, config: StoreConfig<T>) -> &mut Self;
}

impl AtomaAppExt for App {
    fn add_store<T: Record>(&mut self, config: StoreConfig<T>) -> &mut Self {
        if self.world().contains_resource::<Store<T>>() {
            return self;
        }
        let mut table: Table<T> = Table::new(config.indexes.iter().cloned());
        let mut errors = Vec::new();
        if let Some(path) = &config.seed {
            match super::seed::load_seed::<T>(path, &config.transforms) {
                Ok(records) => {
                    table.apply(records.into_iter().map(|r| (r.id().clone(), Some(Entry::new(r, 0)))));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Load what the store's route keeps locally (start-up, not a system: blocking is fine).
        let world = self.world();
        let route = world
            .get_resource::<Routes>()
            .and_then(|r| r.resolve(None, config.route.as_deref()).ok().map(|(_, r)| r.clone()));
        if let (Some(route), Some(io)) = (route, world.get_resource::<IoRuntimeRes>())
            && let Some(fut) = route.query.load(T::STORE)
        {
            match io.io.block_on(fut) {
                Some(Ok(records)) => {
                    let mut bad = 0usize;
                    let mut first_bad = None;
                    let entries: Vec<_> = records
                        .into_iter()
                        .filter_map(|(m, version)| match from_json::<T>(m, config.transforms.inbound.as_ref()) {
                            Ok(r) => Some((r.id().clone(), Some(Entry::new(r, version)))),
                            Err(e) => {
                                bad += 1;
                                first_bad.get_or_insert(e);
                                None
                            }
                        })
                        .collect();
                    table.apply(entries);
                    if let Some(e) = first_bad {
                        errors.push(format!("{}: {bad} stored record(s) do not fit the type and were left on disk untouched; first: {e}", T::STORE));
                    }
                }
                Some(Err(e)) => errors.push(format!("{}: loading failed: {e}", T::STORE)),
                None => {}
            }
        }
        if let Some(mut status) = self.world_mut().get_resource_mut::<AtomaStatus>() {
            status.errors.extend(errors);
        }
        let state = StoreState::new(&config);
        // A store on the `sync` route is synced: its name goes to the lanes, its channel to
        // the receive system.
        let on_sync = self
            .world()
            .get_resource::<Routes>()
            .and_then(|r| r.resolve(None, config.route.as_deref()).ok().map(|(n, _)| n == "sync"))
            .unwrap_or(false);
        if on_sync && let Some(link) = self.world().get_resource::<SyncLink>() {
            link.engine.add_resource(T::STORE);
            let (tx, transforms) = (state.synced_tx.clone(), state.transforms.clone());
            link.engine.set_sink(T::STORE, move |changes| {
                let (ops, refused) = super::reduce::decode_synced(changes, &transforms);
                if !ops.is_empty() {
                    let _ = tx.send(ops);
                }
                refused
            });
        }
        self.insert_resource(Store::new(table))
            .insert_resource(state)
            .init_resource::<HistoryLog<T>>()
            .add_message::<WriteIntent<T>>()
            .add_message::<WriteSettled<T>>()
            .add_message::<Committed<T>>()
            .add_message::<ReadFinished<T>>()
            .add_systems(PostUpdate, reduce_store::<T>.run_if(has_work::<T>).in_set(AtomaSystems::Reduce))
            .add_systems(
                PostUpdate,
                refresh_live::<T>
                    .run_if(resource_changed::<Store<T>>.or_eager(any_with_component::<LiveQuery<T>>))
                    .in_set(AtomaSystems::Publish),
            );
        if config.mirror {
            super::mirror::register::<T>(self);
        }
        self
    }
}
