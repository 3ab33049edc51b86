//! Routes: named pairs of executors with a policy, and their resolution.

use std::collections::HashMap;
use std::sync::Arc;

use bevy_ecs::resource::Resource;

use crate::io::Executor;

/// How a route treats writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Apply writes to the store at once, rolling back if the executor fails (`true`), or only
    /// once the executor confirmed them.
    pub optimistic: bool,
    /// A write to a record missing from the store may fetch it first (one commit for both).
    pub implicit_fetch: bool,
    /// The executor stores each record exactly as it was sent (the built-in `memory` and
    /// `local` executors; not `sync`, whose server may merge other clients' writes into a
    /// record): an ack needs only the new version, not the stored copy (unless the store has a
    /// writeback transform, which reshapes the copy).
    pub stores_as_sent: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self { optimistic: true, implicit_fetch: true, stores_as_sent: false }
    }
}

impl RoutePolicy {
    /// The policy of an executor that stores records exactly as they are sent.
    pub fn stores_as_sent(mut self) -> Self {
        self.stores_as_sent = true;
        self
    }
}

/// A named route: a query executor, a write executor and a policy.
#[derive(Clone)]
pub struct Route {
    /// Runs queries.
    pub query: Arc<dyn Executor>,
    /// Runs writes.
    pub write: Arc<dyn Executor>,
    /// The policy.
    pub policy: RoutePolicy,
}

impl Route {
    /// A route whose queries and writes go to one executor.
    pub fn new(executor: impl Executor) -> Self {
        let e: Arc<dyn Executor> = Arc::new(executor);
        Self { query: e.clone(), write: e, policy: RoutePolicy::default() }
    }
    /// Sets the policy.
    pub fn with_policy(mut self, policy: RoutePolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// The registered routes and the default one.
#[derive(Resource, Clone, Default)]
pub struct Routes {
    routes: HashMap<String, Route>,
    default: Option<String>,
}

impl Routes {
    /// Registers (or replaces) a route.
    pub fn insert(&mut self, name: impl Into<String>, route: Route) {
        self.routes.insert(name.into(), route);
    }
    /// Sets the default route.
    pub fn set_default(&mut self, name: impl Into<String>) {
        self.default = Some(name.into());
    }
    /// The default route's name.
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }
    /// A route by name.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }
    /// Resolves: the op's route, else the store's, else the default. `Err` names what was
    /// asked for when nothing resolves.
    pub fn resolve<'a>(
        &'a self,
        op: Option<&str>,
        store: Option<&str>,
    ) -> Result<(&'a str, &'a Route), Option<String>> {
        let name = op.or(store).or(self.default.as_deref()).ok_or(None)?;
        self.routes.get_key_value(name).map(|(k, r)| (k.as_str(), r)).ok_or_else(|| Some(name.to_owned()))
    }
}
