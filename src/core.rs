//! The pure engine: records and field access, queries, indexes and the planner, the write
//! reducer, relations. No Bevy, no IO, no async: the server reuses all of it.

mod fields;
mod helpers;
mod index;
mod patch;
mod planner;
pub mod query;
mod reducer;
mod relation;
mod table;
mod value;

pub use fields::{FieldList, Fields, JsonRecord, JsonRecordError, Keyed, Record, RecordId, ToValue};
#[doc(hidden)]
pub use fields::{Warm, WarmHeap, WarmNothing};
pub(crate) use helpers::beside;
pub use index::{IndexKind, IndexSpec};
pub use patch::{PatchError, PatchOp, apply_patch};
pub use planner::{Access, Explain, IndexUse, QueryPage};
pub use query::{Compiled, Dir, Filter, Page, PageInfo, Query, QueryError, Sort, TextMode, field};
pub use reducer::{
    Applied, Inverse, Op, OpMeta, Origin, Plan, Segment, Settled, UpdateWith, UpsertMode, Validate, Versions,
    WriteAction, WriteEntry, WriteError, reduce,
};
pub use relation::{Include, Included, Relation, RelationKind, include};
pub use table::{Change, Entry, IdMap, IdSet, Table};
pub use value::{Key, Value};
