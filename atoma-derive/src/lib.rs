//! Derive macros for atoma records. Use them through the `atoma` crate, which re-exports them.
//!
//! - `#[derive(Record)]` makes a struct with named fields a typed record: field access by name
//!   for queries (`Fields`, `ToValue`), its id (`Keyed`), and its store name, id field name and
//!   field list (`Record`).
//! - `#[derive(Fields)]` gives a nested struct field access by name, so that queries reach its
//!   fields by dotted paths such as `"stats.hp"`.
//! - `#[derive(FieldValue)]` shows an enum of unit variants to queries as a string: the name
//!   serde writes for the variant.
//!
//! None of them derives `Serialize`, `Deserialize` or `Clone`: derive those beside them.
//!
//! ```ignore
//! use atoma::{FieldValue, Fields, Record};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Record, Clone, Serialize, Deserialize)]
//! #[record(store = "players")] // default: the type name in snake_case, here "player"
//! #[serde(rename_all = "camelCase")]
//! struct Player {
//!     id: u64,             // the id: the field named `id`, or the one marked #[record(id)]
//!     display_name: String, // queries see it as "displayName", as serde writes it
//!     class: Class,
//!     stats: Stats,        // reached as "stats.hp"
//!     #[record(skip)]
//!     cache: Vec<u8>,      // hidden from queries
//! }
//!
//! #[derive(Fields, Clone, Serialize, Deserialize)]
//! struct Stats {
//!     hp: i32,
//!     mp: i32,
//! }
//!
//! #[derive(FieldValue, Clone, Copy, Serialize, Deserialize)]
//! #[serde(rename_all = "lowercase")]
//! enum Class {
//!     Warrior, // "warrior"
//!     Mage,    // "mage"
//! }
//!
//! // Player::STORE == "players", Player::ID_FIELD == "id",
//! // Player::FIELDS == ["id", "displayName", "class", "stats"]
//! // player.path("stats.hp") == Some(Value::Int(..))
//! ```
//!
//! Field and variant names follow serde: `#[serde(rename = "..")]`, and on the type
//! `#[serde(rename_all = "..")]` with any of serde's rules. Fields with `#[serde(skip)]` or
//! `#[serde(skip_serializing)]` are hidden from queries like `#[record(skip)]` ones.
//! `#[serde(flatten)]` is not supported: use a nested struct and dotted paths instead.

mod attrs;
mod bounds;
mod errors;
mod field_value;
mod record;
mod rename;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

use crate::record::Derive;

/// Makes a struct with named fields a typed record.
///
/// Implements `Fields` (field access by the names serde writes), `ToValue` (as an object),
/// `Keyed` (the id) and `Record` (`STORE`, `ID_FIELD`, `FIELDS`).
///
/// - `#[record(store = "..")]` on the struct names the store; by default it is the type name
///   in snake_case (`GuildMember` → `"guild_member"`).
/// - `#[record(id)]` on a field makes it the id; by default the id is the field named `id`.
/// - `#[record(skip)]` on a field hides it from queries; its type need not implement `ToValue`.
/// - `#[record(bound = "..")]` on the struct adds where predicates to the `Record` impl.
///
/// For a generic struct, the impls require `ToValue` of every visible field type that mentions a
/// type parameter, and `Keyed` and `Record` require the struct to be `Clone + Send + Sync +
/// 'static`. Serde's bounds cannot be inferred: state them with
/// `#[record(bound = "T: Serialize + DeserializeOwned")]`, whose where predicates go on the
/// `Record` impl (paths in it resolve where the struct is defined).
///
/// ```ignore
/// #[derive(Record, Clone, Serialize, Deserialize)]
/// #[record(store = "members")]
/// struct GuildMember {
///     #[record(id)]
///     name: String,
///     rank: u8,
/// }
/// ```
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    record::expand(&input, Derive::Record).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Gives a struct with named fields access by name, for nested structs reached by dotted paths.
///
/// Implements `Fields` and `ToValue` (as an object) like `#[derive(Record)]`, with the same
/// serde renames and `#[record(skip)]`, but no id or store.
///
/// ```ignore
/// #[derive(Fields, Clone, Serialize, Deserialize)]
/// struct Stats {
///     hp: i32,
///     #[serde(rename = "maxHp")]
///     max_hp: i32,
/// }
/// // a record with `stats: Stats` answers the paths "stats.hp" and "stats.maxHp"
/// ```
#[proc_macro_derive(Fields, attributes(record))]
pub fn derive_fields(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    record::expand(&input, Derive::Fields).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Shows an enum of unit variants to queries as a string: the name serde writes for it.
///
/// Implements `ToValue`, returning `Value::Str`, honouring `#[serde(rename = "..")]` on variants
/// and `#[serde(rename_all = "..")]` on the enum.
///
/// ```ignore
/// #[derive(FieldValue, Clone, Copy, Serialize, Deserialize)]
/// #[serde(rename_all = "snake_case")]
/// enum Faction {
///     NightWatch,          // "night_watch"
///     #[serde(rename = "free folk")]
///     FreeFolk,            // "free folk"
/// }
/// ```
#[proc_macro_derive(FieldValue)]
pub fn derive_field_value(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    field_value::expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}
