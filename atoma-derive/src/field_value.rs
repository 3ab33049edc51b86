//! `#[derive(FieldValue)]`: an enum of unit variants, shown to queries as its variant's name.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

use crate::attrs;
use crate::errors::Errors;

/// Expands `#[derive(FieldValue)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(s) => {
            return Err(syn::Error::new(
                s.struct_token.span,
                "#[derive(FieldValue)] needs an enum of unit variants; \
                 for a struct, use #[derive(Fields)] or #[derive(Record)]",
            ));
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(FieldValue)] needs an enum of unit variants, not a union",
            ));
        }
    };

    let serde = attrs::serde(&input.attrs);
    let mut errors = Errors::default();
    if let Some(span) = serde.tagged {
        errors.push(syn::Error::new(
            span,
            "#[derive(FieldValue)] shows a variant as its name, so it supports externally tagged \
             enums only (no `tag` or `untagged`)",
        ));
    }

    let mut arms = Vec::with_capacity(data.variants.len());
    for variant in &data.variants {
        if !matches!(variant.fields, Fields::Unit) {
            errors.push(syn::Error::new(
                variant.fields.span(),
                format!("#[derive(FieldValue)] needs unit variants only, and `{}` has fields", variant.ident),
            ));
            continue;
        }
        let variant_serde = attrs::serde(&variant.attrs);
        if let Some(span) = variant_serde.tagged {
            errors.push(syn::Error::new(span, "#[derive(FieldValue)] does not support untagged variants"));
        }
        let name = variant_serde.rename.unwrap_or_else(|| {
            let plain = variant.ident.unraw().to_string();
            match serde.rename_all {
                Some(rule) => rule.apply_to_variant(&plain),
                None => plain,
            }
        });
        let ident = &variant.ident;
        arms.push(quote!(Self::#ident => ::atoma::__private::Value::Str(#name),));
    }
    errors.finish()?;

    let ty = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::atoma::__private::ToValue for #ty #ty_generics #where_clause {
            fn to_value(&self) -> ::atoma::__private::Value<'_> {
                match *self {
                    #(#arms)*
                }
            }
        }
    })
}
