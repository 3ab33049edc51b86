//! Relations: belongsTo / hasMany / hasOne includes resolve a whole page with one indexed
//! lookup per relation.

use atoma::core::{Access, Entry, Include, IndexSpec, Keyed, Query, Relation, Sort, Table, field, include};
use atoma::{Record, core::Dir};
use serde::{Deserialize, Serialize};

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "guilds")]
struct Guild {
    id: String,
    name: String,
}

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "players")]
struct Player {
    id: u32,
    name: String,
    guild_id: Option<String>,
    score: i64,
}

fn tables() -> (Table<Guild>, Table<Player>) {
    let mut guilds = Table::new([]);
    guilds.apply(
        ["red", "blue", "empty"]
            .map(|g| (g.to_string(), Some(Entry::new(Guild { id: g.into(), name: format!("The {g}s") }, 1)))),
    );
    let mut players = Table::new([IndexSpec::eq("guild_id"), IndexSpec::ordered("score")]);
    players.apply((0..40u32).map(|i| {
        let guild_id = match i % 3 {
            0 => Some("red".to_string()),
            1 => Some("blue".to_string()),
            _ => None,
        };
        (i, Some(Entry::new(Player { id: i, name: format!("p{i}"), guild_id, score: i64::from(i * 7 % 13) }, 1)))
    }));
    (guilds, players)
}

#[test]
fn belongs_to_resolves_a_page_with_one_id_lookup() {
    let (guilds, players) = tables();
    let page = players.query(&Query::all().sort_desc("score").limit(10).compile().expect("valid")).expect("runs");
    let parents: Vec<&Player> = page.records().collect();
    let rel = Relation::belongs_to("guild", "guilds", "guild_id");
    let inc = include(&Include::from(rel), &parents, &guilds).expect("includes");
    for (p, related) in parents.iter().zip(&inc.per_parent) {
        match &p.guild_id {
            Some(g) => assert_eq!(related.iter().map(|e| e.record.id.as_str()).collect::<Vec<_>>(), [g.as_str()]),
            None => assert!(related.is_empty()),
        }
    }
    let ex = inc.lookup.expect("one lookup");
    assert_eq!(ex.used.len(), 1);
    assert_eq!(ex.used[0].kind, None, "the id map serves belongsTo on id");
}

#[test]
fn has_many_and_has_one_use_the_foreign_key_index_once() {
    let (guilds, players) = tables();
    let parents: Vec<&Guild> = ["red", "blue", "empty"].iter().filter_map(|g| guilds.get(&g.to_string())).collect();
    let rel = Relation::has_many("members", "players", "guild_id");
    assert_eq!(rel.target_index(Player::ID_FIELD), Some(IndexSpec::eq("guild_id")));
    let inc = Include { relation: rel, sort: vec![Sort { field: "score".into(), dir: Dir::Desc }], limit: Some(3) };
    let got = include(&inc, &parents, &players).expect("includes");
    let ex = got.lookup.expect("one lookup");
    assert!(matches!(ex.access, Access::Candidates { exact: true, .. }), "{ex:?}");
    assert_eq!(ex.used.len(), 1);
    for (g, members) in parents.iter().zip(&got.per_parent) {
        let q = Query::filter(field("guild_id").eq(g.id.clone())).sort_desc("score").limit(3);
        let want: Vec<u32> =
            players.scan(&q.compile().expect("valid")).expect("runs").records().map(|p| *p.id()).collect();
        assert_eq!(members.iter().map(|e| e.record.id).collect::<Vec<_>>(), want, "guild {}", g.id);
    }
    assert!(got.per_parent[2].is_empty());
    let one =
        include(&Include::from(Relation::has_one("top", "players", "guild_id")), &parents, &players).expect("includes");
    assert!(one.per_parent.iter().all(|v| v.len() <= 1));
    assert_eq!(one.per_parent[0].len(), 1);
}
