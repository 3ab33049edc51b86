//! The Bevy side: the plugin, stores as resources, writes as messages reduced once per frame,
//! reads through routes, live queries, entity mirroring, history.

mod config;
mod flush;
mod history;
mod live;
mod messages;
mod metrics;
mod mirror;
mod plugin;
mod reads;
mod reduce;
mod route;
mod seed;
mod store;
mod sync;
mod writer;

pub use config::{StoreConfig, Transform, Transforms, Validator};
pub use flush::IoRuntimeRes;
pub use history::{History, HistoryError, HistoryLog, HistoryStep};
pub use live::LiveQuery;
pub use messages::{Committed, ReadFinished, ReadSource, ReadStarted, Ticket, WriteFailure, WriteIntent, WriteSettled};
pub use metrics::{AtomaMetrics, StoreMetrics};
pub use mirror::{Mirror, MirrorEntities, MirrorOf};
pub use plugin::{AtomaAppExt, AtomaPlugin, AtomaStatus, AtomaSystems, HttpRoute};
pub use reads::{FetchPolicy, MergePolicy, Reader};
pub use route::{Route, RoutePolicy, Routes};
pub use seed::{SeedError, load_seed};
pub use store::Store;
pub use sync::{SyncControl, SyncStatus};
pub use writer::{WriteOptions, Writer, WriterWith, now_ms};
