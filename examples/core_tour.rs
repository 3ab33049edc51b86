//! A small tour of atoma's core engine: typed records, indexes, queries with cursor pages,
//! one-commit writes through the reducer, and a relation include.
//!
//! Run: `cargo run --example core_tour`

use atoma::Record;
use atoma::core::{
    Entry, Include, IndexSpec, Op, OpMeta, PatchOp, Query, Relation, Table, UpdateWith, Versions, field, include,
    reduce,
};
use serde::{Deserialize, Serialize};

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "guilds")]
struct Guild {
    id: String,
    name: String,
}

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "players")]
struct Player {
    id: u32,
    name: String,
    level: i64,
    score: f64,
    guild: String,
    #[serde(default)]
    gold: i64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut guilds: Table<Guild> = Table::new([]);
    guilds.apply(
        ["red", "blue"]
            .map(|g| (g.to_string(), Some(Entry::new(Guild { id: g.into(), name: format!("The {g} guild") }, 1)))),
    );

    let mut players = Table::new([
        IndexSpec::eq("guild"),
        IndexSpec::ordered("level"),
        IndexSpec::ordered("score"),
        IndexSpec::text("name"),
    ]);
    // A frame's worth of writes: one plan, one commit, one index update.
    let names = ["Aria Swift", "Borin Stone", "Cale Ember", "Dara Frost", "Eryn Swift", "Fenn Ash"];
    let ops = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = Player {
                id: i as u32 + 1,
                name: (*n).into(),
                level: 5 + 7 * i as i64,
                score: 100.0 * (i as f64 + 1.0) % 370.0,
                guild: if i % 2 == 0 { "red".into() } else { "blue".into() },
                gold: 0,
            };
            (Op::Create(p), OpMeta { idempotency_key: format!("seed-{i}"), ..OpMeta::default() })
        })
        .collect();
    let plan = reduce(&players, ops, Versions::Client, None);
    println!("seeded: {} changes, {} write entries", plan.changes.len(), plan.entries.len());
    players.apply(plan.changes);

    let q =
        Query::filter(field("level").gte(10).and(field("guild").eq("red"))).sort_desc("score").limit(20).compile()?;
    let (page, explain) = players.query_explained(&q)?;
    println!("red players at level 10+, best first ({:?}):", explain.access);
    for p in page.records() {
        println!("  {:>3} {:<12} level {:>2} score {:>5.1}", p.id, p.name, p.level, p.score);
    }

    let fuzzy = Query::filter(field("name").fuzzy("swfit", 2)).compile()?;
    let found: Vec<_> = players.query(&fuzzy)?.records().map(|p| p.name.clone()).collect();
    println!("fuzzy 'swfit': {found:?}");

    // Cursor pages of two, stable under writes elsewhere.
    let mut token = None;
    loop {
        let page = players.query(&Query::all().sort_asc("level").limit(2).after(token).compile()?)?;
        println!("page: {:?}", page.records().map(|p| p.id).collect::<Vec<_>>());
        if page.page_info.has_next != Some(true) {
            break;
        }
        token = page.page_info.cursor;
    }

    // An update by closure and a commutative patch in one commit.
    let ops = vec![
        (
            Op::Update {
                id: 1,
                base_version: None,
                with: UpdateWith::Closure(Box::new(|p: &mut Player| p.level += 1)),
            },
            OpMeta::default(),
        ),
        (Op::Patch { id: 1, base_version: None, ops: vec![PatchOp::inc("gold", 25)] }, OpMeta::default()),
    ];
    let plan = reduce(&players, ops, Versions::Client, None);
    let undo = plan.rollback(|_| true);
    players.apply(plan.changes);
    println!("player 1 after the commit: {:?}", players.get(&1));
    let plan = reduce(&players, undo.into_iter().map(|o| (o, OpMeta::default())).collect(), Versions::Client, None);
    players.apply(plan.changes);
    println!("player 1 after undo:       {:?}", players.get(&1));

    // A relation include: one lookup for the whole page.
    let page = players.query(&Query::all().sort_desc("score").limit(3).compile()?)?;
    let parents: Vec<&Player> = page.records().collect();
    let inc = include(&Include::from(Relation::belongs_to("guild", "guilds", "guild")), &parents, &guilds)?;
    for (p, g) in parents.iter().zip(&inc.per_parent) {
        println!("  {} belongs to {:?}", p.name, g.first().map(|e| e.record.name.as_str()));
    }
    Ok(())
}
