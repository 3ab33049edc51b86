//! atoma-server: the backend of atoma's wire protocol (`PROTOCOL.md`), as a library to embed in
//! a game backend and as the `atoma-server` binary.
//!
//! - `POST /ops`: query, write and changes.pull ops, answered in one 200 with a result per op;
//! - `GET /sync/subscribe`: Server-Sent Events (`retry`, `: ping`, `sync.notify`);
//! - `GET /health`: `{"ok":true}`.
//!
//! Records are JSON objects with an `id` and a server-assigned `version`, kept in a [`Storage`]
//! ([`RedbStorage`], one file, by default) and in memory in atoma's own indexed tables, which
//! answer queries. Writes are serialized, so compare-and-set and idempotent replays are exact;
//! all writes of a request commit in one durable transaction before the response is sent.
//!
//! ```no_run
//! # async fn run() -> Result<(), atoma_server::ServerError> {
//! use atoma_server::{ResourceConfig, Server, ServerConfig};
//! let config = ServerConfig::new()
//!     .with_bind("127.0.0.1:0".parse().expect("an address"))
//!     .with_data_dir("data")
//!     .with_token("secret-alice", "alice")
//!     .with_resource(ResourceConfig::new("players").with_read(["*"]).with_write(["*"]).with_owner_field("ownerId"));
//! let server = Server::start(config).await?;
//! println!("listening on {}", server.addr);
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Embedding: build a [`ServerState`] and merge [`router`] into your own axum app.

pub mod config;
mod error;
mod http;
mod ops;
mod state;
pub mod storage;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use config::{Limits, ResourceConfig, ServerConfig, TokenConfig};
pub use error::{ConfigError, ServerError, StorageError};
pub use http::router;
pub use state::ServerState;
pub use storage::{MemoryStorage, RedbStorage, Storage};

/// Starts servers.
#[derive(Debug)]
pub struct Server;

/// A server serving on the current tokio runtime.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on (the real port when the config asked for port 0).
    pub addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Validates the config, opens its storage (the redb file in `data_dir`, or memory),
    /// binds `config.bind` and serves on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        let state = tokio::task::spawn_blocking(move || ServerState::open(config))
            .await
            .map_err(|e| ServerError::Serve(format!("opening the storage: {e}")))??;
        Self::serve(state).await
    }

    /// Like [`Server::start`], with a storage of your own.
    pub async fn start_with_storage(
        config: ServerConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<RunningServer, ServerError> {
        let state = tokio::task::spawn_blocking(move || ServerState::with_storage(config, storage))
            .await
            .map_err(|e| ServerError::Serve(format!("loading the storage: {e}")))??;
        Self::serve(state).await
    }

    /// Binds `state.config().bind` and serves `state`.
    pub async fn serve(state: Arc<ServerState>) -> Result<RunningServer, ServerError> {
        let bind = state.config().bind;
        let listener =
            tokio::net::TcpListener::bind(bind).await.map_err(|source| ServerError::Bind { addr: bind, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: bind, source })?;
        let mut stop = state.shutdown.subscribe();
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the state is gone: stop too.
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        Ok(RunningServer { addr, state, task })
    }
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (config, head cursor).
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Stops accepting, ends SSE streams, lets requests in flight finish, then closes the
    /// storage (so that the data folder can be opened again).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.state.shutdown();
        self.wait().await
    }

    /// Waits until the server stops (after [`ServerState::shutdown`] or a serve error), then
    /// until its storage is closed.
    pub async fn wait(self) -> Result<(), ServerError> {
        let RunningServer { state, task, .. } = self;
        let weak: Weak<ServerState> = Arc::downgrade(&state);
        drop(state);
        let served = task.await;
        // Blocking tasks of the last requests may still hold the state for a moment.
        for _ in 0..500 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Serve(e.to_string())),
            Err(e) => Err(ServerError::Serve(format!("the server task failed: {e}"))),
        }
    }
}
