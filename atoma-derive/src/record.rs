//! `#[derive(Record)]` and `#[derive(Fields)]`: field access by name for structs with named
//! fields, and for records an id, a store name and a field list.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, Generics, Ident, LitStr, WherePredicate, parse_quote};

use crate::attrs;
use crate::bounds;
use crate::errors::Errors;
use crate::rename;

/// Which derive is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derive {
    /// `#[derive(Record)]`.
    Record,
    /// `#[derive(Fields)]`.
    Fields,
}

impl Derive {
    /// The derive as users write it, for error messages.
    fn attr(self) -> &'static str {
        match self {
            Derive::Record => "#[derive(Record)]",
            Derive::Fields => "#[derive(Fields)]",
        }
    }
}

/// A named field of the struct, as queries see it.
struct FieldInfo<'a> {
    /// The field.
    field: &'a Field,
    /// Its Rust name.
    ident: &'a Ident,
    /// Its name on the wire (and in queries).
    name: String,
    /// Whether queries cannot see it.
    skipped: bool,
}

/// Expands `#[derive(Record)]` or `#[derive(Fields)]`.
pub(crate) fn expand(input: &DeriveInput, derive: Derive) -> syn::Result<TokenStream> {
    let named = named_fields(input, derive)?;
    let mut errors = Errors::default();

    let container = attrs::record_container(&input.attrs).unwrap_or_else(|e| {
        errors.push(e);
        Default::default()
    });
    let serde = attrs::serde(&input.attrs);
    if let Derive::Fields = derive {
        if let Some(store) = &container.store {
            errors.at(store.span(), "`store` applies to #[derive(Record)] only");
        }
        if let Some(first) = container.bound.first() {
            errors.at(first.span(), "`bound` applies to #[derive(Record)] only");
        }
    }
    if let Some(span) = serde.transparent {
        errors.at(span, format!("{} does not support #[serde(transparent)]", derive.attr()));
    }

    let mut fields = Vec::with_capacity(named.len());
    let mut marked_ids = Vec::new();
    for field in named {
        let Some(ident) = &field.ident else { continue };
        let record = attrs::record_field(&field.attrs).unwrap_or_else(|e| {
            errors.push(e);
            Default::default()
        });
        let field_serde = attrs::serde(&field.attrs);
        if let Some(span) = field_serde.flatten {
            errors.at(
                span,
                format!(
                    "{} does not support #[serde(flatten)]: use a nested struct with \
                     #[derive(Fields)] and reach its fields by a dotted path such as \"stats.hp\"",
                    derive.attr()
                ),
            );
        }
        if let Some(span) = record.id {
            match derive {
                Derive::Record => marked_ids.push((fields.len(), span)),
                Derive::Fields => errors.at(span, "`id` applies to #[derive(Record)] only"),
            }
        }
        let name = field_serde.rename.unwrap_or_else(|| {
            let plain = ident.unraw().to_string();
            match serde.rename_all {
                Some(rule) => rule.apply_to_field(&plain),
                None => plain,
            }
        });
        let skipped = record.skip.is_some() || field_serde.skip;
        fields.push(FieldInfo { field, ident, name, skipped });
    }

    let mut seen: HashMap<&str, &Ident> = HashMap::new();
    for f in fields.iter().filter(|f| !f.skipped) {
        if let Some(other) = seen.insert(&f.name, f.ident) {
            errors.at(
                f.ident.span(),
                format!("fields `{other}` and `{}` are both named \"{}\" on the wire", f.ident, f.name),
            );
        }
    }

    let id = match derive {
        Derive::Fields => None,
        Derive::Record => pick_id(input, &fields, &marked_ids, &mut errors),
    };
    errors.finish()?;

    let visible: Vec<&FieldInfo> = fields.iter().filter(|f| !f.skipped).collect();
    let generics = bounds::with_field_bounds(&input.generics, visible.iter().map(|f| &f.field.ty));
    let mut out = fields_impls(input, &generics, &visible);
    if let Some(id) = id {
        let store = match &container.store {
            Some(store) => store.clone(),
            None => LitStr::new(&rename::snake_case(&input.ident.unraw().to_string()), input.ident.span()),
        };
        out.extend(record_impls(input, &generics, &fields, id, &store, &container.bound, &visible));
    }
    Ok(out)
}

/// The named fields of a struct, or an error saying why the input is not one.
fn named_fields(input: &DeriveInput, derive: Derive) -> syn::Result<&NamedFields> {
    let what = derive.attr();
    match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Ok(&named.named),
            Fields::Unnamed(unnamed) => Err(syn::Error::new(
                unnamed.span(),
                format!("{what} needs a struct with named fields, not a tuple struct"),
            )),
            Fields::Unit => Err(syn::Error::new(
                input.ident.span(),
                format!("{what} needs a struct with named fields, not a unit struct"),
            )),
        },
        Data::Enum(e) => Err(syn::Error::new(
            e.enum_token.span,
            format!(
                "{what} needs a struct with named fields, not an enum; \
                 for an enum of unit variants stored as strings, use #[derive(FieldValue)]"
            ),
        )),
        Data::Union(u) => {
            Err(syn::Error::new(u.union_token.span, format!("{what} needs a struct with named fields, not a union")))
        }
    }
}

/// The fields of a struct with named fields.
type NamedFields = syn::punctuated::Punctuated<Field, syn::Token![,]>;

/// The index of the id field: the one marked `#[record(id)]`, else the one named `id`.
fn pick_id(input: &DeriveInput, fields: &[FieldInfo], marked: &[(usize, Span)], errors: &mut Errors) -> Option<usize> {
    let id = match marked {
        [] => match fields.iter().position(|f| f.ident.unraw() == "id") {
            Some(i) => i,
            None => {
                errors.at(
                    input.ident.span(),
                    "#[derive(Record)] needs an id field: name a field `id` or mark one with #[record(id)]",
                );
                return None;
            }
        },
        [(i, _)] => *i,
        [(first, _), rest @ ..] => {
            for (_, span) in rest {
                errors.at(
                    *span,
                    format!(
                        "a record has one id field, and `{}` is already marked #[record(id)]",
                        fields[*first].ident
                    ),
                );
            }
            return None;
        }
    };
    if fields[id].skipped {
        errors.at(fields[id].ident.span(), "the id field cannot be skipped: queries and the wire both need it");
        return None;
    }
    Some(id)
}

/// `impl Fields` and `impl ToValue` (as `Value::Object`).
fn fields_impls(input: &DeriveInput, generics: &Generics, visible: &[&FieldInfo]) -> TokenStream {
    let ty = &input.ident;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let arms = visible.iter().map(|f| {
        let name = &f.name;
        let ident = f.ident;
        let value = quote_spanned!(f.field.ty.span()=> ::atoma::__private::ToValue::to_value(&self.#ident));
        quote!(#name => ::core::option::Option::Some(#value),)
    });
    quote! {
        impl #impl_generics ::atoma::__private::Fields for #ty #ty_generics #where_clause {
            fn field(&self, name: &str) -> ::core::option::Option<::atoma::__private::Value<'_>> {
                match name {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        impl #impl_generics ::atoma::__private::ToValue for #ty #ty_generics #where_clause {
            fn to_value(&self) -> ::atoma::__private::Value<'_> {
                ::atoma::__private::Value::Object(self)
            }
        }
    }
}

/// `impl Keyed` and `impl Record`.
fn record_impls(
    input: &DeriveInput,
    generics: &Generics,
    fields: &[FieldInfo],
    id: usize,
    store: &LitStr,
    bound: &[WherePredicate],
    visible: &[&FieldInfo],
) -> TokenStream {
    let ty = &input.ident;
    let mut generics = generics.clone();
    if generics.type_params().next().is_some() {
        // `Keyed` needs these of `Self`; for a generic struct they hold only for some parameters.
        generics.make_where_clause().predicates.push(parse_quote!(
            Self: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let mut record_generics = generics.clone();
    record_generics.make_where_clause().predicates.extend(bound.iter().cloned());
    let (record_impl_generics, record_ty_generics, record_where_clause) = record_generics.split_for_impl();
    let id = &fields[id];
    let id_ident = id.ident;
    // Every field is copied by a clone, skipped ones too.
    let all = fields.iter().map(|f| f.ident);
    let id_ty = &id.field.ty;
    let id_name = &id.name;
    let names = visible.iter().map(|f| &f.name);
    quote! {
        impl #impl_generics ::atoma::__private::Keyed for #ty #ty_generics #where_clause {
            type Id = #id_ty;
            const ID_FIELD: &'static str = #id_name;
            fn id(&self) -> &Self::Id {
                &self.#id_ident
            }
            #[inline]
            fn warm(&self) {
                use ::atoma::__private::{WarmHeap as _, WarmNothing as _};
                #( (&::atoma::__private::Warm(&self.#all)).warm(); )*
            }
        }

        impl #record_impl_generics ::atoma::__private::Record for #ty #record_ty_generics #record_where_clause {
            const STORE: &'static str = #store;
            const FIELDS: &'static [&'static str] = &[#(#names),*];
        }
    }
}
