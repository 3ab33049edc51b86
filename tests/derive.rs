//! The derives: `Record`, `Fields` and `FieldValue`.

use atoma::{FieldValue, Fields, Keyed, Record, ToValue, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(FieldValue, Clone, Copy, Debug, Serialize, Deserialize)]
enum Class {
    Warrior,
    #[serde(rename = "wizard")]
    Mage,
}

#[derive(FieldValue, Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Rarity {
    VeryRare,
    #[serde(rename = "legend")]
    Legendary,
}

#[derive(FieldValue, Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mood {
    QuiteHappy,
}

#[derive(Fields, Clone, Debug, Serialize, Deserialize)]
struct Stats {
    hp: i32,
    #[serde(rename = "maxHp")]
    max_hp: i32,
    speed: f32,
    #[record(skip)]
    #[serde(skip)]
    scratch: NotAValue,
}

/// A field type without `ToValue`: only skipped fields may have it.
#[derive(Clone, Debug, Default)]
struct NotAValue(u8);

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "players")]
struct Player {
    id: u64,
    name: String,
    level: u32,
    guild: Option<String>,
    tags: Vec<String>,
    class: Class,
    stats: Stats,
    #[record(skip)]
    #[serde(skip)]
    cache: NotAValue,
}

fn player() -> Player {
    Player {
        id: 7,
        name: "Ayla".into(),
        level: 12,
        guild: None,
        tags: vec!["pvp".into(), "tank".into()],
        class: Class::Mage,
        stats: Stats { hp: 30, max_hp: 40, speed: 1.5, scratch: NotAValue(1) },
        cache: NotAValue(2),
    }
}

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GuildMember {
    #[record(id)]
    member_name: String,
    guild_rank: u8,
    #[serde(rename = "joined")]
    joined_at: i64,
    #[serde(skip_serializing)]
    secret_note: String,
    r#type: String,
}

fn member() -> GuildMember {
    GuildMember {
        member_name: "bob".into(),
        guild_rank: 3,
        joined_at: -5,
        secret_note: "shh".into(),
        r#type: "officer".into(),
    }
}

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NpcAI {
    id: String,
    home_zone: String,
    rarity: Rarity,
    mood: Mood,
}

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "boxes", bound = "T: Serialize + DeserializeOwned")]
struct Crate<T> {
    id: u32,
    content: T,
    extra: Vec<T>,
}

#[derive(Fields, Clone, Debug)]
struct Pair<A, B> {
    left: A,
    right: Option<B>,
}

#[derive(Fields)]
struct Opaque {
    #[record(skip)]
    _hidden: NotAValue,
}

fn int(v: Option<Value<'_>>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(i),
        _ => None,
    }
}

fn strings(v: Option<Value<'_>>) -> Option<Vec<String>> {
    match v {
        Some(Value::List(l)) => Some((0..l.len()).map(|i| l.at(i).as_str().map(str::to_owned)).collect::<Option<_>>()?),
        _ => None,
    }
}

#[test]
fn fields_are_read_by_name() {
    let p = player();
    assert_eq!(int(p.field("id")), Some(7));
    assert_eq!(p.field("name").and_then(|v| v.as_str()), Some("Ayla"));
    assert_eq!(int(p.field("level")), Some(12));
    assert!(matches!(p.field("stats"), Some(Value::Object(_))));
    assert!(matches!(p.to_value(), Value::Object(_)));
    assert!(p.field("nope").is_none());
    assert!(p.field("Name").is_none());
}

#[test]
fn option_fields_are_null_or_their_value() {
    let mut p = player();
    assert!(matches!(p.field("guild"), Some(Value::Null)));
    p.guild = Some("Owls".into());
    assert_eq!(p.field("guild").and_then(|v| v.as_str()), Some("Owls"));
}

#[test]
fn vec_fields_are_lists() {
    let p = player();
    assert_eq!(strings(p.field("tags")), Some(vec!["pvp".to_owned(), "tank".to_owned()]));
    match p.field("tags") {
        Some(Value::List(l)) => assert!(matches!(l.at(2), Value::Null)),
        other => panic!("expected a list, got {other:?}"),
    }
}

#[test]
fn nested_fields_are_read_by_dotted_path() {
    let p = player();
    assert_eq!(int(p.path("stats.hp")), Some(30));
    assert_eq!(int(p.path("stats.maxHp")), Some(40));
    assert_eq!(p.path("stats.speed").and_then(|v| v.as_f64()), Some(1.5));
    assert!(p.path("stats.max_hp").is_none());
    assert!(p.path("stats.scratch").is_none());
    assert!(p.path("stats.hp.x").is_none());
    assert!(p.path("name.x").is_none());
}

#[test]
fn skipped_fields_are_hidden() {
    let p = player();
    assert_eq!((p.cache.0, p.stats.scratch.0), (2, 1));
    assert!(p.field("cache").is_none());
    assert!(!Player::FIELDS.contains(&"cache"));
    let m = member();
    assert_eq!(m.secret_note, "shh");
    assert!(m.field("secretNote").is_none());
    assert!(m.field("secret_note").is_none());
    assert!(!GuildMember::FIELDS.contains(&"secretNote"));
    assert!(Opaque { _hidden: NotAValue(3) }.field("_hidden").is_none());
}

#[test]
fn ids_come_from_the_id_field_or_the_marked_one() {
    let p = player();
    let id: &u64 = Keyed::id(&p);
    assert_eq!(*id, 7);
    assert_eq!(Player::ID_FIELD, "id");

    let m = member();
    let id: &String = m.id();
    assert_eq!(id, "bob");
    assert_eq!(GuildMember::ID_FIELD, "memberName");
    assert_eq!(m.field("memberName").and_then(|v| v.as_str()), Some("bob"));
}

#[test]
fn store_names_are_explicit_or_snake_case() {
    assert_eq!(Player::STORE, "players");
    assert_eq!(GuildMember::STORE, "guild_member");
    assert_eq!(NpcAI::STORE, "npc_ai");
    assert_eq!(<Crate<i64> as Record>::STORE, "boxes");
}

#[test]
fn field_lists_follow_declaration_order() {
    assert_eq!(Player::FIELDS, ["id", "name", "level", "guild", "tags", "class", "stats"]);
    assert_eq!(GuildMember::FIELDS, ["memberName", "guildRank", "joined", "type"]);
    assert_eq!(NpcAI::FIELDS, ["Id", "HomeZone", "Rarity", "Mood"]);
}

#[test]
fn serde_renames_are_the_query_names() {
    let m = member();
    assert_eq!(int(m.field("guildRank")), Some(3));
    assert!(m.field("guild_rank").is_none());
    assert_eq!(int(m.field("joined")), Some(-5));
    assert!(m.field("joinedAt").is_none());
    assert_eq!(m.field("type").and_then(|v| v.as_str()), Some("officer"));

    // The query names are the names serde writes.
    let json = serde_json::to_value(&m).expect("json");
    let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
    let mut want = GuildMember::FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
    for name in GuildMember::FIELDS {
        assert_eq!(json.field(name).map(|v| v.to_key()), m.field(name).map(|v| v.to_key()), "{name}");
    }

    let p = player();
    let json = serde_json::to_value(&p).expect("json");
    assert_eq!(json.path("stats.maxHp").and_then(|v| v.as_f64()), Some(40.0));
}

#[test]
fn enums_are_their_serde_names() {
    assert_eq!(Class::Warrior.to_value().as_str(), Some("Warrior"));
    assert_eq!(Class::Mage.to_value().as_str(), Some("wizard"));
    assert_eq!(Rarity::VeryRare.to_value().as_str(), Some("VERY_RARE"));
    assert_eq!(Rarity::Legendary.to_value().as_str(), Some("legend"));
    assert_eq!(Mood::QuiteHappy.to_value().as_str(), Some("quite-happy"));
    for (value, rarity) in
        [(Rarity::VeryRare.to_value(), Rarity::VeryRare), (Rarity::Legendary.to_value(), Rarity::Legendary)]
    {
        let wire = serde_json::to_value(rarity).expect("json");
        assert_eq!(value.as_str(), wire.as_str());
    }

    assert_eq!(player().field("class").and_then(|v| v.as_str()), Some("wizard"));
    let npc = NpcAI { id: "n1".into(), home_zone: "swamp".into(), rarity: Rarity::Legendary, mood: Mood::QuiteHappy };
    assert_eq!(npc.field("Rarity").and_then(|v| v.as_str()), Some("legend"));
    assert_eq!(npc.field("Mood").and_then(|v| v.as_str()), Some("quite-happy"));
    assert_eq!(npc.field("HomeZone").and_then(|v| v.as_str()), Some("swamp"));
    assert_eq!(npc.id(), "n1");
}

#[test]
fn generic_structs_are_supported() {
    let c = Crate { id: 3, content: "apple".to_owned(), extra: vec!["pear".to_owned()] };
    assert_eq!(*c.id(), 3);
    assert_eq!(c.field("content").and_then(|v| v.as_str()), Some("apple"));
    assert_eq!(strings(c.field("extra")), Some(vec!["pear".to_owned()]));
    assert_eq!(<Crate<String> as Record>::FIELDS, ["id", "content", "extra"]);
    assert_eq!(<Crate<String> as Keyed>::ID_FIELD, "id");

    let p = Pair { left: 5_i64, right: None::<String> };
    assert_eq!(int(p.field("left")), Some(5));
    assert!(matches!(p.field("right"), Some(Value::Null)));
    let p = Pair { left: Class::Warrior, right: Some(2.5_f64) };
    assert_eq!(p.field("left").and_then(|v| v.as_str()), Some("Warrior"));
    assert_eq!(p.field("right").and_then(|v| v.as_f64()), Some(2.5));
    assert!(matches!(p.to_value(), Value::Object(_)));
}

/// A record stores and reads through the traits alone, as the engine does.
fn describe<R: Record>(r: &R) -> Vec<(String, String)> {
    R::FIELDS.iter().map(|name| (name.to_string(), format!("{:?}", r.field(name)))).collect()
}

#[test]
fn every_listed_field_is_readable() {
    for (name, value) in describe(&player()) {
        assert!(value.starts_with("Some("), "{name}: {value}");
    }
    for (name, value) in describe(&member()) {
        assert!(value.starts_with("Some("), "{name}: {value}");
    }
}
