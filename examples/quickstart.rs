//! atoma in a headless Bevy app, on the embedded default (a redb file under `data/quickstart`).
//!
//! Two related stores (guilds and players), an item catalog seeded from `assets/items.json`,
//! writes reduced into one commit per frame, indexed queries with a relation include, and a
//! live query that updates when the store changes. Run it twice: the second run finds the
//! first run's players on disk.
//!
//! Run: `cargo run --example quickstart`

use std::time::{Duration, Instant};

use atoma::core::Include;
use atoma::prelude::*;
use atoma::runtime::AtomaStatus;
use bevy_app::{App, AppExit, Update};
use bevy_ecs::prelude::*;
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
    guild_id: String,
    level: i64,
    score: f64,
    #[serde(default)]
    gold: i64,
}

#[derive(FieldValue, Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Weapon,
    Armor,
    Consumable,
}

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "items")]
struct Item {
    id: String,
    name: String,
    kind: Kind,
    price: i64,
    level: i64,
    tags: Vec<String>,
}

/// The top three players, kept fresh by atoma.
#[derive(Component)]
struct Leaderboard;

fn main() {
    let mut app = App::new();
    app.add_plugins(AtomaPlugin::default().data_dir("data/quickstart"))
        .add_store::<Guild>(StoreConfig::default())
        .add_store::<Player>(
            StoreConfig::default()
                .index(IndexSpec::eq("guild_id"))
                .index(IndexSpec::ordered("level"))
                .index(IndexSpec::ordered("score"))
                .index(IndexSpec::text("name"))
                .relation(Relation::belongs_to("guild", "guilds", "guild_id"))
                .validate(|p: &Player| if p.gold < 0 { Err(format!("{} cannot owe gold", p.name)) } else { Ok(()) }),
        )
        .add_store::<Item>(
            StoreConfig::default()
                .seed("assets/items.json")
                .index(IndexSpec::eq("kind"))
                .index(IndexSpec::ordered("price")),
        )
        .add_systems(Update, (script, show_leaderboard, report_failures));
    app.finish();
    app.cleanup();

    let status = app.world().resource::<AtomaStatus>();
    for e in &status.errors {
        eprintln!("start-up problem: {e}");
    }
    let players = app.world().resource::<Store<Player>>().len();
    if players > 0 {
        println!("loaded {players} players from data/quickstart/atoma.redb (written by an earlier run)");
    } else {
        println!("no saved players yet: this run creates them");
    }
    app.world_mut().spawn((Leaderboard, LiveQuery::<Player>::new(atoma::Query::all().sort_desc("score").limit(3))));

    // A headless game loop at ~1 kHz until the script says it is done.
    let start = Instant::now();
    while app.should_exit().is_none() && start.elapsed() < Duration::from_secs(10) {
        app.update();
        std::thread::sleep(Duration::from_millis(1));
    }
    if app.should_exit().is_none() {
        eprintln!("gave up waiting after 10 s");
        std::process::exit(1);
    }
}

/// The game: one step per phase, each step in its own frame.
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its dependencies")]
fn script(
    mut phase: Local<u32>,
    mut pending: Local<Vec<Ticket>>,
    mut settled: MessageReader<WriteSettled<Player>>,
    mut guilds_w: Writer<Guild>,
    mut players_w: Writer<Player>,
    guilds: Res<Store<Guild>>,
    players: Res<Store<Player>>,
    items: Res<Store<Item>>,
    metrics: Res<AtomaMetrics>,
    mut exit: MessageWriter<AppExit>,
) {
    for s in settled.read() {
        pending.retain(|t| *t != s.ticket);
    }
    if !pending.is_empty() {
        return; // wait for the executor to confirm (durably) before the next step
    }
    *phase += 1;
    match *phase {
        1 if players.is_empty() => {
            guilds_w.create(Guild { id: "red".into(), name: "The Red Hand".into() });
            guilds_w.create(Guild { id: "blue".into(), name: "Blue Lanterns".into() });
            let names =
                ["Aria Swift", "Borin Stone", "Cale Ember", "Dara Frost", "Eryn Swift", "Fenn Ash", "Gale Storm"];
            let created = names.iter().enumerate().map(|(i, n)| Player {
                id: i as u32 + 1,
                name: (*n).into(),
                guild_id: if i % 2 == 0 { "red" } else { "blue" }.into(),
                level: 3 + 4 * i as i64,
                score: (i as f64 * 37.0) % 100.0,
                gold: 10,
            });
            pending.extend(players_w.create_many(created));
            println!("frame 1: {} intents buffered; they become one commit this frame", names.len() + 2);
        }
        1 => println!("frame 1: players exist already; skipping creation"),
        2 => {
            let m = metrics.store("players");
            println!("players: {} records, {} commit(s) so far", players.len(), m.commits);
            let q = atoma::Query::filter(field("guild_id").eq("red").and(field("level").gte(5)))
                .sort_desc("score")
                .limit(10);
            let page = players.query(&q).expect("a valid query");
            let explain = players.explain(&q).expect("a valid query");
            println!("red guild, level 5+, best score first (access: {:?}):", explain.access);
            let rows: Vec<&Player> = page.records().collect();
            let rel = Include::from(Relation::belongs_to("guild", "guilds", "guild_id"));
            let inc = players.include(&rel, &rows, &guilds).expect("a valid include");
            for (p, g) in rows.iter().zip(&inc.per_parent) {
                let guild = g.first().map_or("?", |e| e.record.name.as_str());
                println!(
                    "  {:<12} level {:>2}  score {:>5.1}  gold {:>3}  [{guild}]",
                    p.name, p.level, p.score, p.gold
                );
            }
            let swift = players.query(&atoma::Query::filter(field("name").fuzzy("swfit", 2))).expect("a valid query");
            println!("fuzzy 'swfit': {:?}", swift.records().map(|p| p.name.as_str()).collect::<Vec<_>>());
            let cheap = items
                .query(&atoma::Query::filter(field("kind").eq("weapon").and(field("price").lte(200))).sort_asc("price"))
                .expect("valid");
            println!(
                "weapons up to 200 gold (seeded catalog): {:?}",
                cheap.records().map(|i| i.name.as_str()).collect::<Vec<_>>()
            );
        }
        3 => {
            // A quest reward: a commutative gold increment and a score bump in one frame.
            pending.push(players_w.inc(3, "gold", 25));
            pending.push(players_w.update(3, |p| p.score += 150.0));
            // This one breaks a validation and settles as an error, not a panic.
            pending.push(players_w.update(2, |p| p.gold = -5));
            println!("frame 3: Cale Ember wins a quest (+25 gold, +150 score)");
        }
        4 => {
            let cale = players.entry(&3).expect("Cale exists");
            println!(
                "Cale Ember now: gold {}, score {:.1}, server version {}",
                cale.record.gold, cale.record.score, cale.version
            );
            println!("done: run again to see the players loaded from disk");
            exit.write(AppExit::Success);
        }
        _ => {}
    }
}

/// The leaderboard entity, when atoma changed its results.
type ChangedBoard<'w, 's> = Query<'w, 's, &'static LiveQuery<Player>, (With<Leaderboard>, Changed<LiveQuery<Player>>)>;

fn show_leaderboard(board: ChangedBoard, players: Res<Store<Player>>) {
    for lq in board.iter().filter(|lq| lq.refreshes() > 0) {
        let top: Vec<String> = lq.records(&players).map(|p| format!("{} ({:.0})", p.name, p.score)).collect();
        println!("leaderboard changed: {}", top.join(", "));
    }
}

fn report_failures(mut settled: MessageReader<WriteSettled<Player>>) {
    for s in settled.read() {
        if let Err(e) = &s.result {
            println!("write {:?} failed as expected: {e}", s.ticket);
        }
    }
}
