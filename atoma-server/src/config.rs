//! The server's configuration: a TOML file with defaults for everything, or built in code.
//!
//! ```toml
//! bind = "127.0.0.1:8787"        # the binary's --bind overrides it
//! data_dir = "data"              # the binary's --data overrides it
//! heartbeat_secs = 15            # SSE `: ping` interval
//!
//! [limits]
//! max_body_bytes = 4194304
//! max_ops = 200
//! max_entries = 1000
//! default_query_limit = 50
//! max_query_limit = 1000
//! max_pull_limit = 1000
//! idempotency_ttl_days = 7
//!
//! [[tokens]]
//! token = "secret-alice"
//! principal = "alice"
//!
//! [[resources]]
//! name = "players"
//! read = ["*"]
//! write = ["alice"]
//! owner_field = "ownerId"
//! indexes = [{ field = "level", kind = "ordered" }, { field = "name", kind = "text" }]
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use atoma::core::IndexSpec;
use atoma::protocol::valid_resource;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The address the binary binds when neither the config nor `--bind` names one.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8787);

/// The principal of every request when the config has no tokens (auth off).
pub const ANONYMOUS: &str = "anonymous";

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where to listen (port 0: any free port).
    pub bind: SocketAddr,
    /// The folder of the data file (`atoma-server.redb`). `None`: in memory, nothing survives.
    pub data_dir: Option<PathBuf>,
    /// Seconds between SSE `: ping` comments (≥ 1).
    pub heartbeat_secs: u64,
    /// Request and result limits.
    pub limits: Limits,
    /// Bearer tokens and their principals. None: auth is off, every request is `anonymous`
    /// and may use any resource.
    pub tokens: Vec<TokenConfig>,
    /// Per-resource rights, owner field and indexes.
    pub resources: Vec<ResourceConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND,
            data_dir: None,
            heartbeat_secs: 15,
            limits: Limits::default(),
            tokens: Vec::new(),
            resources: Vec::new(),
        }
    }
}

/// Limits. Going over one is an error with the code of the protocol (`PAYLOAD_TOO_LARGE`,
/// `TOO_MANY_OPS`, `TOO_MANY_ITEMS`); query and pull limits are clamped instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest request body (413 above it).
    pub max_body_bytes: usize,
    /// Ops per request (422 `TOO_MANY_OPS` above it).
    pub max_ops: usize,
    /// Entries per write op (per-op `TOO_MANY_ITEMS` above it).
    pub max_entries: usize,
    /// A query's limit when it gives none.
    pub default_query_limit: u32,
    /// Query limits are clamped to this.
    pub max_query_limit: u32,
    /// Pull limits are clamped to this (and it is the default).
    pub max_pull_limit: u32,
    /// How long an idempotency key replays its first result.
    pub idempotency_ttl_days: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_ops: 200,
            max_entries: 1000,
            default_query_limit: 50,
            max_query_limit: 1000,
            max_pull_limit: 1000,
            idempotency_ttl_days: 7,
        }
    }
}

/// A bearer token and the principal it stands for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret, as sent in `authorization: Bearer <token>`.
    pub token: String,
    /// Who it is (the names in `read`, `write` and owner fields).
    pub principal: String,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig").field("token", &"<redacted>").field("principal", &self.principal).finish()
    }
}

/// One resource (store): who may read and write it, whose records are whose, its indexes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// The resource name (`[A-Za-z0-9_.-]{1,64}`).
    pub name: String,
    /// Principals that may query and pull it (`"*"`: every principal). Default: none.
    #[serde(default)]
    pub read: Vec<String>,
    /// Principals that may write it (`"*"`: every principal). Default: none.
    #[serde(default)]
    pub write: Vec<String>,
    /// A top-level field naming each record's owner: a principal then reads and writes only
    /// records whose owner field is its name (a create fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_field: Option<String>,
    /// Indexes for queries (`kind`: `eq`, `ordered`, `text`, `substring`).
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
}

impl ResourceConfig {
    /// A resource nobody may read or write yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), read: Vec::new(), write: Vec::new(), owner_field: None, indexes: Vec::new() }
    }
    /// Who may read (`"*"`: everyone).
    pub fn with_read<S: Into<String>>(mut self, principals: impl IntoIterator<Item = S>) -> Self {
        self.read = principals.into_iter().map(Into::into).collect();
        self
    }
    /// Who may write (`"*"`: everyone).
    pub fn with_write<S: Into<String>>(mut self, principals: impl IntoIterator<Item = S>) -> Self {
        self.write = principals.into_iter().map(Into::into).collect();
        self
    }
    /// Records belong to the principal named in this field.
    pub fn with_owner_field(mut self, field: impl Into<String>) -> Self {
        self.owner_field = Some(field.into());
        self
    }
    /// Adds an index.
    pub fn with_index(mut self, spec: IndexSpec) -> Self {
        self.indexes.push(spec);
        self
    }

    /// Whether `principal` is in `list` (or the list has `"*"`).
    pub(crate) fn allows(list: &[String], principal: &str) -> bool {
        list.iter().any(|p| p == "*" || p == principal)
    }
}

impl ServerConfig {
    /// The defaults: auth off, in memory, no resources configured.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: ServerConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: None, message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: ServerConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: Some(path.to_path_buf()), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Listens on `addr`.
    pub fn with_bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Keeps the data file in `dir`.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    /// Sends an SSE heartbeat every `secs` seconds.
    pub fn with_heartbeat_secs(mut self, secs: u64) -> Self {
        self.heartbeat_secs = secs;
        self
    }
    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Adds a bearer token (which turns auth on).
    pub fn with_token(mut self, token: impl Into<String>, principal: impl Into<String>) -> Self {
        self.tokens.push(TokenConfig { token: token.into(), principal: principal.into() });
        self
    }
    /// Adds a resource.
    pub fn with_resource(mut self, resource: ResourceConfig) -> Self {
        self.resources.push(resource);
        self
    }

    /// Whether requests need a bearer token.
    pub fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The data file inside `data_dir`.
    pub fn data_file(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join(crate::storage::DATA_FILE))
    }

    /// Checks names, tokens, owner fields, indexes and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.heartbeat_secs == 0 {
            return bad("heartbeat_secs must be at least 1".into());
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_body_bytes", l.max_body_bytes as u64),
            ("max_ops", l.max_ops as u64),
            ("max_entries", l.max_entries as u64),
            ("default_query_limit", u64::from(l.default_query_limit)),
            ("max_query_limit", u64::from(l.max_query_limit)),
            ("max_pull_limit", u64::from(l.max_pull_limit)),
            ("idempotency_ttl_days", l.idempotency_ttl_days),
        ] {
            if v == 0 {
                return bad(format!("limits.{name} must be at least 1"));
            }
        }
        if l.default_query_limit > l.max_query_limit {
            return bad(format!(
                "limits.default_query_limit ({}) is above limits.max_query_limit ({})",
                l.default_query_limit, l.max_query_limit
            ));
        }
        if l.idempotency_ttl_days > 36_500 {
            return bad("limits.idempotency_ttl_days is above 100 years".into());
        }
        let mut tokens = HashSet::new();
        for t in &self.tokens {
            if t.token.is_empty() || t.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!("the token of principal {:?} is empty or has whitespace", t.principal));
            }
            if t.principal.is_empty() || t.principal == "*" {
                return bad("a token's principal must be a non-empty name other than \"*\"".into());
            }
            if !tokens.insert(&t.token) {
                return bad(format!("a token is listed twice (principal {:?})", t.principal));
            }
        }
        let mut names = HashSet::new();
        for r in &self.resources {
            if !valid_resource(&r.name) {
                return bad(format!("resource name {:?} must match [A-Za-z0-9_.-]{{1,64}}", r.name));
            }
            if !names.insert(&r.name) {
                return bad(format!("resource {:?} is listed twice", r.name));
            }
            if let Some(f) = &r.owner_field
                && (f.is_empty() || f.contains('.') || f == "id" || f == "version")
            {
                return bad(format!(
                    "resource {:?}: owner_field {f:?} must be a top-level field other than id and version",
                    r.name
                ));
            }
            for i in &r.indexes {
                if i.field.is_empty() || i.field.split('.').any(str::is_empty) {
                    return bad(format!(
                        "resource {:?}: index field {:?} is empty or has an empty step",
                        r.name, i.field
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoma::core::IndexKind;

    #[test]
    fn toml_with_defaults_and_resources() {
        let c = ServerConfig::from_toml_str(
            r#"
            heartbeat_secs = 2
            [limits]
            max_ops = 10
            [[tokens]]
            token = "t-alice"
            principal = "alice"
            [[resources]]
            name = "players"
            read = ["*"]
            write = ["alice"]
            owner_field = "ownerId"
            indexes = [{ field = "level", kind = "ordered" }, { field = "bio", kind = "text" }]
            "#,
        )
        .expect("valid config");
        assert_eq!(c.heartbeat_secs, 2);
        assert_eq!(c.limits.max_ops, 10);
        assert_eq!(c.limits.max_entries, 1000);
        assert!(c.auth_enabled());
        assert_eq!(c.resources[0].indexes[0].kind, IndexKind::Ordered);
        assert_eq!(c.resources[0].owner_field.as_deref(), Some("ownerId"));
        assert!(format!("{:?}", c.tokens[0]).contains("redacted"));
    }

    #[test]
    fn bad_configs_are_explained() {
        let e = ServerConfig::from_toml_str("nope = 1").expect_err("unknown key");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = ServerConfig::from_toml_str("[[resources]]\nname = \"a b\"").expect_err("bad name");
        assert!(e.to_string().contains("a b"), "{e}");
        let e =
            ServerConfig::from_toml_str("[[resources]]\nname = \"a\"\nindexes = [{ field = \"x\", kind = \"fast\" }]")
                .expect_err("bad kind");
        assert!(e.to_string().contains("fast"), "{e}");
        let e = ServerConfig::from_toml_str("[limits]\nmax_ops = 0").expect_err("zero");
        assert!(e.to_string().contains("max_ops"), "{e}");
    }
}
