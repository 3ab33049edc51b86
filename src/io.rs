//! The async side: the tokio runtime the plugin owns, the executor trait, and the built-in
//! executors. Nothing here touches the Bevy `World`; results go back to the ECS over
//! crossbeam channels.

mod executor;
mod local;
mod memory;

pub use executor::{BoxFuture, Executor, IoRuntime, LoadedRecord};
pub use local::{LocalExecutor, OpenError};
pub use memory::MemoryExecutor;
