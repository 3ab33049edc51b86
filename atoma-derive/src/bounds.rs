//! The where clauses of generated impls for generic types.

use std::collections::HashSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Generics, Type, parse_quote_spanned};

/// The type's generics, plus `FieldType: ToValue` for each of `field_types` that mentions a
/// type parameter: `struct Pair<A> { left: A, all: Vec<A> }` gets `A: ToValue, Vec<A>: ToValue`.
/// Field types without a type parameter need no bound: the compiler checks them as they are.
pub(crate) fn with_field_bounds<'a>(generics: &Generics, field_types: impl IntoIterator<Item = &'a Type>) -> Generics {
    let params: HashSet<String> = generics.type_params().map(|p| p.ident.to_string()).collect();
    let mut out = generics.clone();
    if params.is_empty() {
        return out;
    }
    let mut bounded = HashSet::new();
    let where_clause = out.make_where_clause();
    for ty in field_types {
        let tokens = ty.to_token_stream();
        if mentions(tokens.clone(), &params) && bounded.insert(tokens.to_string()) {
            where_clause.predicates.push(parse_quote_spanned!(ty.span()=> #ty: ::atoma::__private::ToValue));
        }
    }
    out
}

/// Whether `tokens` name any of `params`.
fn mentions(tokens: TokenStream, params: &HashSet<String>) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(ident) => params.contains(&ident.to_string()),
        TokenTree::Group(group) => mentions(group.stream(), params),
        TokenTree::Punct(_) | TokenTree::Literal(_) => false,
    })
}
