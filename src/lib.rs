//! atoma: a local-first game-data store for Bevy.
#![doc = include_str!("../README.md")]

extern crate self as atoma;

pub mod core;

pub use crate::core::{FieldList, Fields, JsonRecord, Key, Keyed, Record, RecordId, ToValue, Value};
pub use atoma_derive::{FieldValue, Fields, Record};

/// Items the derive macros refer to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::core::{FieldList, Fields, Keyed, Record, ToValue, Value};
}
