//! Case conversions: serde's `rename_all` rules, and the default store name of a record type.

/// A `#[serde(rename_all = "..")]` rule, applied exactly as serde applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenameRule {
    /// `"lowercase"`.
    Lower,
    /// `"UPPERCASE"`.
    Upper,
    /// `"PascalCase"`.
    Pascal,
    /// `"camelCase"`.
    Camel,
    /// `"snake_case"`.
    Snake,
    /// `"SCREAMING_SNAKE_CASE"`.
    ScreamingSnake,
    /// `"kebab-case"`.
    Kebab,
    /// `"SCREAMING-KEBAB-CASE"`.
    ScreamingKebab,
}

/// The names serde accepts, with their rules.
const RULES: &[(&str, RenameRule)] = &[
    ("lowercase", RenameRule::Lower),
    ("UPPERCASE", RenameRule::Upper),
    ("PascalCase", RenameRule::Pascal),
    ("camelCase", RenameRule::Camel),
    ("snake_case", RenameRule::Snake),
    ("SCREAMING_SNAKE_CASE", RenameRule::ScreamingSnake),
    ("kebab-case", RenameRule::Kebab),
    ("SCREAMING-KEBAB-CASE", RenameRule::ScreamingKebab),
];

impl RenameRule {
    /// The rule serde calls `name`, if there is one.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        RULES.iter().find(|(n, _)| *n == name).map(|&(_, rule)| rule)
    }

    /// Renames a struct field, which serde assumes is written in snake_case.
    pub(crate) fn apply_to_field(self, field: &str) -> String {
        match self {
            RenameRule::Lower | RenameRule::Snake => field.to_owned(),
            RenameRule::Upper | RenameRule::ScreamingSnake => field.to_ascii_uppercase(),
            RenameRule::Pascal => {
                let mut out = String::with_capacity(field.len());
                let mut capitalize = true;
                for ch in field.chars() {
                    if ch == '_' {
                        capitalize = true;
                    } else if capitalize {
                        out.push(ch.to_ascii_uppercase());
                        capitalize = false;
                    } else {
                        out.push(ch);
                    }
                }
                out
            }
            RenameRule::Camel => lower_first(&RenameRule::Pascal.apply_to_field(field)),
            RenameRule::Kebab => field.replace('_', "-"),
            RenameRule::ScreamingKebab => field.to_ascii_uppercase().replace('_', "-"),
        }
    }

    /// Renames an enum variant, which serde assumes is written in PascalCase.
    pub(crate) fn apply_to_variant(self, variant: &str) -> String {
        match self {
            RenameRule::Pascal => variant.to_owned(),
            RenameRule::Lower => variant.to_ascii_lowercase(),
            RenameRule::Upper => variant.to_ascii_uppercase(),
            RenameRule::Camel => lower_first(variant),
            RenameRule::Snake => {
                let mut out = String::with_capacity(variant.len() + 4);
                for (i, ch) in variant.char_indices() {
                    if i > 0 && ch.is_uppercase() {
                        out.push('_');
                    }
                    out.push(ch.to_ascii_lowercase());
                }
                out
            }
            RenameRule::ScreamingSnake => RenameRule::Snake.apply_to_variant(variant).to_ascii_uppercase(),
            RenameRule::Kebab => RenameRule::Snake.apply_to_variant(variant).replace('_', "-"),
            RenameRule::ScreamingKebab => RenameRule::ScreamingSnake.apply_to_variant(variant).replace('_', "-"),
        }
    }
}

/// `s` with its first character lowercased (ASCII only, as serde does).
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// A type name in snake_case, for the default store name: `GuildMember` → `guild_member`,
/// `HTTPServer` → `http_server`, `Item2D` → `item2_d`.
pub(crate) fn snake_case(type_name: &str) -> String {
    let chars: Vec<char> = type_name.chars().collect();
    let mut out = String::with_capacity(type_name.len() + 4);
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            let after_word = prev.is_lowercase() || prev.is_ascii_digit();
            if prev != '_' && (after_word || (prev.is_uppercase() && next_is_lower)) {
                out.push('_');
            }
        }
        out.extend(ch.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> RenameRule {
        RenameRule::from_name(name).expect("a serde rule")
    }

    #[test]
    fn fields_are_renamed_like_serde() {
        let cases = [
            ("lowercase", "max_hp"),
            ("UPPERCASE", "MAX_HP"),
            ("PascalCase", "MaxHp"),
            ("camelCase", "maxHp"),
            ("snake_case", "max_hp"),
            ("SCREAMING_SNAKE_CASE", "MAX_HP"),
            ("kebab-case", "max-hp"),
            ("SCREAMING-KEBAB-CASE", "MAX-HP"),
        ];
        for (name, want) in cases {
            assert_eq!(rule(name).apply_to_field("max_hp"), want, "{name}");
        }
    }

    #[test]
    fn variants_are_renamed_like_serde() {
        let cases = [
            ("lowercase", "verylow"),
            ("UPPERCASE", "VERYLOW"),
            ("PascalCase", "VeryLow"),
            ("camelCase", "veryLow"),
            ("snake_case", "very_low"),
            ("SCREAMING_SNAKE_CASE", "VERY_LOW"),
            ("kebab-case", "very-low"),
            ("SCREAMING-KEBAB-CASE", "VERY-LOW"),
        ];
        for (name, want) in cases {
            assert_eq!(rule(name).apply_to_variant("VeryLow"), want, "{name}");
        }
        assert!(RenameRule::from_name("Title Case").is_none());
    }

    #[test]
    fn store_names_are_snake_case() {
        assert_eq!(snake_case("Player"), "player");
        assert_eq!(snake_case("GuildMember"), "guild_member");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("NpcAI"), "npc_ai");
        assert_eq!(snake_case("Item2D"), "item2_d");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }
}
