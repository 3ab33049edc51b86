//! Per-store settings: indexes, route, relations, transforms, mirroring, seed data.

use std::path::PathBuf;
use std::sync::Arc;

use crate::core::{IndexSpec, Record, Relation};

/// Turns a record into another (inbound / outbound / writeback), or rejects it.
pub type Transform<T> = Arc<dyn Fn(T) -> Result<T, String> + Send + Sync>;
/// Checks a record before it is stored.
pub type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// The transforms of a store (seed 004 §2).
pub struct Transforms<T> {
    /// Applied to records arriving from an executor or a seed file, before the store sees them.
    pub inbound: Option<Transform<T>>,
    /// Applied to records leaving for an executor.
    pub outbound: Option<Transform<T>>,
    /// Applied to an executor's copy written back after a write.
    pub writeback: Option<Transform<T>>,
    /// Every record a write stores must pass these; a failure is a settled error.
    pub validate: Vec<Validator<T>>,
}

impl<T> Default for Transforms<T> {
    fn default() -> Self {
        Self { inbound: None, outbound: None, writeback: None, validate: Vec::new() }
    }
}

impl<T> Clone for Transforms<T> {
    fn clone(&self) -> Self {
        Self {
            inbound: self.inbound.clone(),
            outbound: self.outbound.clone(),
            writeback: self.writeback.clone(),
            validate: self.validate.clone(),
        }
    }
}

/// How a store is set up: `app.add_store::<Player>(StoreConfig::default().index(...))`.
pub struct StoreConfig<T: Record> {
    pub(crate) indexes: Vec<IndexSpec>,
    pub(crate) route: Option<String>,
    pub(crate) relations: Vec<Relation>,
    pub(crate) transforms: Transforms<T>,
    pub(crate) mirror: bool,
    pub(crate) history: bool,
    pub(crate) seed: Option<PathBuf>,
    pub(crate) apply_budget: usize,
}

impl<T: Record> Default for StoreConfig<T> {
    fn default() -> Self {
        Self {
            indexes: Vec::new(),
            route: None,
            relations: Vec::new(),
            transforms: Transforms::default(),
            mirror: false,
            history: true,
            seed: None,
            apply_budget: 1000,
        }
    }
}

impl<T: Record> StoreConfig<T> {
    /// Adds an index.
    pub fn index(mut self, spec: IndexSpec) -> Self {
        self.indexes.push(spec);
        self
    }
    /// The route this store's reads and writes take (default: the plugin's default route).
    pub fn route(mut self, name: impl Into<String>) -> Self {
        self.route = Some(name.into());
        self
    }
    /// Declares a relation to another store.
    pub fn relation(mut self, rel: Relation) -> Self {
        self.relations.push(rel);
        self
    }
    /// Transforms records arriving from executors and seed files.
    pub fn inbound(mut self, f: impl Fn(T) -> Result<T, String> + Send + Sync + 'static) -> Self {
        self.transforms.inbound = Some(Arc::new(f));
        self
    }
    /// Transforms records leaving for executors.
    pub fn outbound(mut self, f: impl Fn(T) -> Result<T, String> + Send + Sync + 'static) -> Self {
        self.transforms.outbound = Some(Arc::new(f));
        self
    }
    /// Transforms an executor's copy before it is written back.
    pub fn writeback(mut self, f: impl Fn(T) -> Result<T, String> + Send + Sync + 'static) -> Self {
        self.transforms.writeback = Some(Arc::new(f));
        self
    }
    /// Adds a validation every stored record must pass.
    pub fn validate(mut self, f: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.transforms.validate.push(Arc::new(f));
        self
    }
    /// Mirrors each record as an entity carrying a [`Mirror<T>`](crate::runtime::Mirror) component.
    pub fn mirror(mut self) -> Self {
        self.mirror = true;
        self
    }
    /// Does not record this store's writes for undo / redo.
    pub fn without_history(mut self) -> Self {
        self.history = false;
        self
    }
    /// The transforms (e.g. to check a seed file with [`load_seed`](crate::runtime::load_seed)).
    pub fn transforms(&self) -> &Transforms<T> {
        &self.transforms
    }
    /// At most this many synced changes are applied per frame (default 1000: ≈ 1–3 ms of the
    /// game thread with three indexes, as the records arrive decoded): a large pull is spread
    /// over frames instead of stalling one.
    pub fn apply_budget(mut self, n: usize) -> Self {
        self.apply_budget = n;
        self
    }
    /// Seeds the store at start from a JSON file (an array of records), e.g. an item catalog
    /// under `assets/`. Seeded records are validated and indexed but never persisted.
    pub fn seed(mut self, path: impl Into<PathBuf>) -> Self {
        self.seed = Some(path.into());
        self
    }
}
