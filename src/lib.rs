//! atoma: a local-first game-data store for Bevy.
#![doc = include_str!("../README.md")]

extern crate self as atoma;

pub mod core;
#[cfg(feature = "io")]
pub mod io;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod runtime;

/// Everything a game needs: `use atoma::prelude::*;`.
#[cfg(feature = "runtime")]
pub mod prelude {
    pub use crate::core::{Dir, Filter, IndexSpec, PatchOp, Relation, field};
    pub use crate::runtime::{
        AtomaAppExt, AtomaMetrics, AtomaPlugin, AtomaSystems, Committed, FetchPolicy, History, LiveQuery, MergePolicy,
        Mirror, MirrorEntities, MirrorOf, ReadFinished, Reader, Store, StoreConfig, Ticket, WriteFailure, WriteOptions,
        WriteSettled, Writer,
    };
    pub use crate::{FieldValue, Fields, Record};
}

pub use crate::core::{FieldList, Fields, JsonRecord, Key, Keyed, Query, Record, RecordId, ToValue, Value};
pub use atoma_derive::{FieldValue, Fields, Record};

/// Items the derive macros refer to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::core::{FieldList, Fields, Keyed, Record, ToValue, Value, Warm, WarmHeap, WarmNothing};
}
