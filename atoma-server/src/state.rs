//! The shared state of a server: config, storage, the in-memory indexed tables, the writer
//! lock, the change head and the notification channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use atoma::JsonRecord;
use atoma::core::{Entry, IndexSpec, Keyed, Table};
use atoma::protocol::{ErrorKind, StandardError};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use tokio::sync::{broadcast, watch};

use crate::config::{ANONYMOUS, ResourceConfig, ServerConfig};
use crate::error::{ServerError, StorageError, access_denied, err};
use crate::storage::{MemoryStorage, RedbStorage, Storage};

type TableChange = (String, Option<Entry<JsonRecord>>);

/// What a principal wants to do with a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Right {
    Read,
    Write,
}

/// What one commit changed, for SSE subscribers: the newest cursor and each changed
/// (resource, owner).
#[derive(Clone, Debug)]
pub(crate) struct Notice {
    pub cursor: u64,
    pub touched: Vec<(String, Option<String>)>,
}

/// Everything a running server shares between requests. Build it with [`ServerState::open`]
/// or [`ServerState::with_storage`] and serve it with [`crate::router`].
pub struct ServerState {
    pub(crate) config: ServerConfig,
    resources: HashMap<String, ResourceConfig>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) tables: RwLock<HashMap<String, Table<JsonRecord>>>,
    /// Held while a request's writes are applied and committed: compare-and-set and
    /// idempotency are exact.
    pub(crate) writer: Mutex<()>,
    /// The newest committed change-log sequence number.
    pub(crate) head: AtomicU64,
    pub(crate) notices: broadcast::Sender<Arc<Notice>>,
    pub(crate) shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("auth", &self.config.auth_enabled())
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .field("head", &self.head())
            .finish()
    }
}

impl ServerState {
    /// Validates the config and opens its storage: the redb file in `data_dir`, or memory
    /// when there is none. Blocks while the data file is read.
    pub fn open(config: ServerConfig) -> Result<Arc<Self>, ServerError> {
        config.validate()?;
        let storage: Arc<dyn Storage> = match config.data_file() {
            Some(path) => Arc::new(RedbStorage::open(path)?),
            None => Arc::new(MemoryStorage::new()),
        };
        Self::with_storage(config, storage)
    }

    /// Validates the config and loads every record of `storage` into indexed tables. Blocks
    /// while storage is read.
    pub fn with_storage(config: ServerConfig, storage: Arc<dyn Storage>) -> Result<Arc<Self>, ServerError> {
        config.validate()?;
        let resources = config.resources.iter().map(|r| (r.name.clone(), r.clone())).collect();
        let (notices, _) = broadcast::channel(1024);
        let (shutdown, _) = watch::channel(false);
        let state = ServerState {
            config,
            resources,
            storage,
            tables: RwLock::new(HashMap::new()),
            writer: Mutex::new(()),
            head: AtomicU64::new(0),
            notices,
            shutdown,
        };
        let loaded = state.storage.load()?;
        let mut by_resource: HashMap<String, Vec<TableChange>> = HashMap::new();
        for r in loaded.records {
            let record = JsonRecord::new(r.stored.value).map_err(|e| {
                StorageError::Backend(format!("stored record {}/{} is not a record: {e}", r.resource, r.id))
            })?;
            if *record.id() != r.id {
                return Err(StorageError::Backend(format!(
                    "stored record {}/{} has the id {:?}",
                    r.resource,
                    r.id,
                    record.id()
                ))
                .into());
            }
            by_resource.entry(r.resource).or_default().push((r.id, Some(Entry::new(record, r.stored.version))));
        }
        {
            let mut tables = state.tables_mut();
            for (resource, changes) in by_resource {
                let mut table = state.new_table(&resource);
                table.apply(changes);
                tables.insert(resource, table);
            }
        }
        state.head.store(loaded.head, Ordering::SeqCst);
        Ok(Arc::new(state))
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The newest change-log cursor.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// Ends every SSE stream (and, for a server started by [`crate::Server`], the server).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether [`ServerState::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn tables(&self) -> RwLockReadGuard<'_, HashMap<String, Table<JsonRecord>>> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn tables_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Table<JsonRecord>>> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty table with the resource's configured indexes (and an equality index on its
    /// owner field).
    pub(crate) fn new_table(&self, resource: &str) -> Table<JsonRecord> {
        let Some(rc) = self.resources.get(resource) else { return Table::new([]) };
        let mut specs = rc.indexes.clone();
        if let Some(of) = &rc.owner_field {
            specs.push(IndexSpec::eq(of.clone()));
        }
        Table::new(specs)
    }

    /// The principal a request's `authorization` header names (`anonymous` with auth off).
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<String, StandardError> {
        if !self.config.auth_enabled() {
            return Ok(ANONYMOUS.to_owned());
        }
        let unauthorized = |m: &str| err("UNAUTHORIZED", ErrorKind::Auth, m);
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(unauthorized("this server needs `authorization: Bearer <token>`"));
        };
        let value = value.to_str().map_err(|_| unauthorized("the authorization header is not text"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthorized("the authorization header must be `Bearer <token>`")),
        };
        // Compare with every token, in time independent of where they differ.
        let mut found = None;
        for t in &self.config.tokens {
            if constant_time_eq(t.token.as_bytes(), token.as_bytes()) {
                found = Some(t.principal.clone());
            }
        }
        found.ok_or_else(|| unauthorized("unknown bearer token"))
    }

    /// Whether `principal` may read or write `resource`; its config if it has one.
    pub(crate) fn authorize(
        &self,
        principal: &str,
        resource: &str,
        right: Right,
    ) -> Result<Option<&ResourceConfig>, StandardError> {
        let rc = self.resources.get(resource);
        if !self.config.auth_enabled() {
            return Ok(rc);
        }
        let Some(rc) = rc else {
            return Err(err(
                "RESOURCE_NOT_ALLOWED",
                ErrorKind::Auth,
                format!("resource {resource} is not served to clients"),
            ));
        };
        let (list, verb) = match right {
            Right::Read => (&rc.read, "read"),
            Right::Write => (&rc.write, "write"),
        };
        if ResourceConfig::allows(list, principal) {
            Ok(Some(rc))
        } else {
            Err(access_denied(format!("{principal} may not {verb} {resource}")))
        }
    }

    /// Whether `principal` may see a change or record of `resource` owned by `owner`.
    pub(crate) fn visible(&self, principal: &str, resource: &str, owner: Option<&str>) -> bool {
        match self.authorize(principal, resource, Right::Read) {
            Ok(rc) => match rc.and_then(|r| r.owner_field.as_ref()) {
                Some(_) => owner == Some(principal),
                None => true,
            },
            Err(_) => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
