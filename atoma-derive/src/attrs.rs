//! The attributes the derives read: `#[record(..)]`, and the `#[serde(..)]` options that decide
//! the names a record shows on the wire.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta, Token, WherePredicate};

use crate::rename::RenameRule;

/// What `#[record(..)]` says about a struct.
#[derive(Default)]
pub(crate) struct RecordContainer {
    /// `store = ".."`.
    pub(crate) store: Option<LitStr>,
    /// `bound = ".."`: where predicates the `Record` impl needs besides the struct's own.
    pub(crate) bound: Vec<WherePredicate>,
}

/// What `#[record(..)]` says about a field: where each option was written.
#[derive(Default)]
pub(crate) struct RecordField {
    /// `id`: this field is the record's id.
    pub(crate) id: Option<Span>,
    /// `skip`: queries do not see this field.
    pub(crate) skip: Option<Span>,
}

/// Reads the `#[record(..)]` attributes of a struct.
pub(crate) fn record_container(attrs: &[Attribute]) -> syn::Result<RecordContainer> {
    let mut out = RecordContainer::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("record")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("store") {
                let lit: LitStr = meta.value()?.parse()?;
                if out.store.is_some() {
                    return Err(meta.error("duplicate `store`"));
                }
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "the store name must not be empty"));
                }
                out.store = Some(lit);
                Ok(())
            } else if meta.path.is_ident("bound") {
                let lit: LitStr = meta.value()?.parse()?;
                let predicates = lit.parse_with(Punctuated::<WherePredicate, Token![,]>::parse_terminated)?;
                out.bound.extend(predicates);
                Ok(())
            } else if meta.path.is_ident("id") || meta.path.is_ident("skip") {
                Err(meta.error("`#[record(id)]` and `#[record(skip)]` go on a field, not on the struct"))
            } else {
                Err(meta.error("unknown record option: expected `store = \"..\"` or `bound = \"..\"`"))
            }
        })?;
    }
    Ok(out)
}

/// Reads the `#[record(..)]` attributes of a field.
pub(crate) fn record_field(attrs: &[Attribute]) -> syn::Result<RecordField> {
    let mut out = RecordField::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("record")) {
        attr.parse_nested_meta(|meta| {
            let slot = if meta.path.is_ident("id") {
                &mut out.id
            } else if meta.path.is_ident("skip") {
                &mut out.skip
            } else if meta.path.is_ident("store") {
                return Err(meta.error("`#[record(store = \"..\")]` goes on the struct, not on a field"));
            } else {
                return Err(meta.error("unknown record option: expected `id` or `skip`"));
            };
            if slot.is_some() {
                return Err(meta.error("duplicate record option"));
            }
            *slot = Some(meta.path.span());
            Ok(())
        })?;
    }
    Ok(out)
}

/// The `#[serde(..)]` options that change what a struct, field, enum or variant looks like on
/// the wire. Options that do not are ignored.
#[derive(Default)]
pub(crate) struct Serde {
    /// `rename = ".."`, or the `serialize` name of `rename(serialize = "..")`.
    pub(crate) rename: Option<String>,
    /// `rename_all = ".."`, or the `serialize` rule of `rename_all(serialize = "..")`.
    pub(crate) rename_all: Option<RenameRule>,
    /// `skip` or `skip_serializing`.
    pub(crate) skip: bool,
    /// `flatten`.
    pub(crate) flatten: Option<Span>,
    /// `transparent`.
    pub(crate) transparent: Option<Span>,
    /// `tag = ".."` or `untagged`: an enum that is not written as its variant's name.
    pub(crate) tagged: Option<Span>,
}

/// Reads the `#[serde(..)]` attributes of an item, field or variant.
///
/// What this cannot parse is skipped: serde's own derive reports it.
pub(crate) fn serde(attrs: &[Attribute]) -> Serde {
    let mut out = Serde::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Ok(metas) = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else {
            continue;
        };
        for meta in &metas {
            let path = meta.path();
            if path.is_ident("rename") {
                if let Some(name) = serialize_name(meta) {
                    out.rename = Some(name.value());
                }
            } else if path.is_ident("rename_all") {
                // An unknown rule is left to serde's derive to report.
                if let Some(rule) = serialize_name(meta).and_then(|n| RenameRule::from_name(&n.value())) {
                    out.rename_all = Some(rule);
                }
            } else if path.is_ident("skip") || path.is_ident("skip_serializing") {
                out.skip = true;
            } else if path.is_ident("flatten") {
                out.flatten = Some(meta.span());
            } else if path.is_ident("transparent") {
                out.transparent = Some(meta.span());
            } else if path.is_ident("tag") || path.is_ident("untagged") {
                out.tagged = Some(meta.span());
            }
        }
    }
    out
}

/// The name a `rename`-like option gives when serializing: `opt = ".."` or
/// `opt(serialize = "..", ..)`.
fn serialize_name(meta: &Meta) -> Option<LitStr> {
    match meta {
        Meta::Path(_) => None,
        Meta::NameValue(nv) => lit_str(&nv.value),
        Meta::List(list) => {
            list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated).ok()?.into_iter().find_map(|inner| {
                match inner {
                    Meta::NameValue(nv) if nv.path.is_ident("serialize") => lit_str(&nv.value),
                    _ => None,
                }
            })
        }
    }
}

/// The string literal `expr` is, if it is one.
fn lit_str(expr: &Expr) -> Option<LitStr> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Some(s.clone()),
        _ => None,
    }
}
