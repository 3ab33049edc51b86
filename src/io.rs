//! The async side: the tokio runtime the plugin owns, the executor trait, and the built-in
//! executors. Nothing here touches the Bevy `World`; results go back to the ECS over
//! crossbeam channels.

mod batch;
mod executor;
mod http;
mod local;
mod memory;
pub mod outbox;
mod sync;

pub use batch::{
    BatchConfig, BatchEngine, BatchEvent, FlushMode, Lane, QueryOverflow, QueueLimits, RetryPolicy, TaskContext,
    TraceIds, Transport,
};
pub use executor::{BoxFuture, Executor, IoRuntime, LoadedRecord};
pub use http::{HttpExecutor, HttpTransport};
pub use local::{LocalExecutor, OpenError};
pub use memory::MemoryExecutor;
pub use sync::{SyncChange, SyncConfig, SyncEngine, SyncEvent, SyncMode, SyncOutput};
