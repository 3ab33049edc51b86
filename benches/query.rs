//! Query-engine benchmark: six query shapes over generated players (1,000,000 by default),
//! each run three ways in the same process — atoma with its indexes, atoma by plain scan,
//! and SQLite in memory (the bundled build, prepared statements, the same indexes, rows read
//! back into structs).
//!
//! Before anything is timed, every variant of every shape is run on all three engines and
//! the answers must be equal record for record: the bench fails loudly otherwise.
//!
//! Each shape is a criterion group with three functions (`atoma_indexed`, `atoma_scan`,
//! `sqlite`). Besides criterion, each variant is timed with `Instant` (median of several
//! runs), and a summary table with the ratios is printed at the end, with the index memory
//! and load times.
//!
//! Environment: `ATOMA_BENCH_N` sets the record count (default 1,000,000);
//! `ATOMA_BENCH_RSS=0` skips the RSS cross-check of index memory. See docs/benchmarks.md.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use atoma::core::query::levenshtein_within;
use atoma::core::{Compiled, Entry, IndexSpec, Query, Table, field};
use criterion::{Criterion, SamplingMode};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};

/// The benchmark record.
#[derive(atoma::Record, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[record(store = "players")]
struct Player {
    id: u64,
    level: u32,
    score: f64,
    guild: String,
    name: String,
    tags: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------

const GUILDS: u64 = 1000;
const VOCAB: usize = 3000;
const RARE_PER_TOKEN: usize = 10;
/// Rare tokens: each uses a letter (c, h, j, q, w, x, y) that no vocabulary word has.
const RARE: [&str; 8] = ["zyzzyva", "quixotry", "jynx", "cwtch", "phlox", "sphynx", "wyvern", "xylyl"];
const CONSONANTS: [char; 14] = ['b', 'd', 'f', 'g', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'z'];
const VOWELS: [char; 5] = ['a', 'e', 'i', 'o', 'u'];
const TAGS: [&str; 20] = [
    "pvp",
    "pve",
    "tank",
    "healer",
    "dps",
    "support",
    "crafter",
    "trader",
    "explorer",
    "raider",
    "casual",
    "hardcore",
    "veteran",
    "newbie",
    "mentor",
    "streamer",
    "collector",
    "speedrunner",
    "roleplayer",
    "builder",
];
const SELECT: &str = "id, level, score, guild, name, tags";

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("index fits usize")
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// Pseudo-words of two or three consonant-vowel syllables.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(VOCAB);
    while out.len() < VOCAB {
        let syllables = 2 + rng.below(2);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push(CONSONANTS[rng.index(CONSONANTS.len())]);
            w.push(VOWELS[rng.index(VOWELS.len())]);
        }
        if seen.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// The records and the parameters the query variants cycle through.
struct Data {
    players: Vec<Player>,
    point_ids: Vec<u64>,
    guilds: Vec<String>,
    ranges: Vec<(u32, u32)>,
    rare: Vec<String>,
    fuzzy: Vec<String>,
    needles: Vec<String>,
}

impl Data {
    fn generate(n: usize) -> Data {
        let mut rng = Rng(0x5EED_A70A);
        let vocab = vocabulary(&mut rng);
        let mut players: Vec<Player> = (0..n as u64)
            .map(|id| {
                let words = 2 + rng.index(2);
                let name = (0..words).map(|_| capitalize(&vocab[rng.index(vocab.len())])).collect::<Vec<_>>().join(" ");
                let mut tags: Vec<String> = Vec::new();
                for _ in 0..rng.index(4) {
                    let t = TAGS[rng.index(TAGS.len())];
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_owned());
                    }
                }
                Player {
                    id,
                    level: 1 + u32::try_from(rng.below(100)).expect("level fits u32"),
                    score: rng.unit() * 10_000.0,
                    guild: format!("guild-{:04}", rng.below(GUILDS)),
                    name,
                    tags,
                }
            })
            .collect();
        // Each rare token goes into RARE_PER_TOKEN distinct records.
        for token in RARE {
            let mut chosen = HashSet::new();
            while chosen.len() < RARE_PER_TOKEN.min(n) {
                chosen.insert(rng.index(n));
            }
            for i in chosen {
                let p = &mut players[i];
                p.name = format!("{} {}", p.name, capitalize(token));
            }
        }
        let point_ids = (0..4096).map(|_| rng.below(n as u64)).collect();
        let guilds = (0..64).map(|_| format!("guild-{:04}", rng.below(GUILDS))).collect();
        let ranges = (0..10).map(|k| (1 + 10 * k, 10 + 10 * k)).collect();
        let six: Vec<&String> = vocab.iter().filter(|w| w.len() == 6).collect();
        // Fuzzy: a six-letter word with one vowel replaced (one substitution away).
        let fuzzy = (0..16)
            .map(|_| {
                let mut chars: Vec<char> = six[rng.index(six.len())].chars().collect();
                let at = 1 + 2 * rng.index(3);
                let v = VOWELS.iter().position(|&v| v == chars[at]).expect("a vowel");
                chars[at] = VOWELS[(v + 1) % VOWELS.len()];
                chars.into_iter().collect()
            })
            .collect();
        // Contains: mid-word lowercase substrings and capitalised word starts, four chars.
        let needles = (0..16)
            .map(|k| {
                let w = six[rng.index(six.len())];
                if k % 2 == 0 { w[1..5].to_owned() } else { capitalize(&w[..4]) }
            })
            .collect();
        Data {
            players,
            point_ids,
            guilds,
            ranges,
            rare: RARE.iter().map(|s| (*s).to_owned()).collect(),
            fuzzy,
            needles,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------------------

fn specs() -> Vec<IndexSpec> {
    vec![
        IndexSpec::eq("guild"),
        IndexSpec::ordered("level"),
        IndexSpec::ordered("score"),
        IndexSpec::text("name"),
        IndexSpec::substring("name"),
        IndexSpec::eq("tags"),
    ]
}

fn load_atoma(players: Vec<Player>) -> Table<Player> {
    let mut table = Table::new(specs());
    table.apply(players.into_iter().map(|p| (p.id, Some(Entry::new(p, 1)))));
    table
}

fn sqlite_error(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

/// Registers `lev_within(a, b, max)`: whether `a` and `b` are within `max` edits — atoma's own
/// edit-distance function, so both engines agree on what "near" means.
fn register_levenshtein(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "lev_within",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let a: Vec<char> = ctx.get_raw(0).as_str().map_err(sqlite_error)?.chars().collect();
            let b: Vec<char> = ctx.get_raw(1).as_str().map_err(sqlite_error)?.chars().collect();
            let max: i64 = ctx.get(2)?;
            Ok(levenshtein_within(&a, &b, usize::try_from(max).unwrap_or(0)))
        },
    )
}

fn load_sqlite(players: &[Player]) -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    register_levenshtein(&conn)?;
    conn.execute_batch(
        "CREATE TABLE players(
            id INTEGER PRIMARY KEY, level INTEGER NOT NULL, score REAL NOT NULL,
            guild TEXT NOT NULL, name TEXT NOT NULL, tags TEXT NOT NULL);
         BEGIN;",
    )?;
    {
        let mut ins = conn.prepare("INSERT INTO players VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for p in players {
            let id = i64::try_from(p.id).expect("id fits i64");
            ins.execute(params![id, p.level, p.score, p.guild, p.name, p.tags.join(",")])?;
        }
    }
    conn.execute_batch(
        "COMMIT;
         CREATE INDEX players_guild ON players(guild);
         CREATE INDEX players_level ON players(level);
         CREATE INDEX players_score ON players(score);
         CREATE VIRTUAL TABLE names_fts USING fts5(name, content='players', content_rowid='id');
         INSERT INTO names_fts(names_fts) VALUES('rebuild');
         INSERT INTO names_fts(names_fts) VALUES('optimize');
         CREATE VIRTUAL TABLE names_vocab USING fts5vocab(names_fts, 'row');
         CREATE VIRTUAL TABLE names_tri USING fts5(name, content='players', content_rowid='id',
             tokenize='trigram case_sensitive 1');
         INSERT INTO names_tri(names_tri) VALUES('rebuild');
         INSERT INTO names_tri(names_tri) VALUES('optimize');
         CREATE TABLE names_words(len INTEGER NOT NULL, term TEXT NOT NULL, PRIMARY KEY (len, term)) WITHOUT ROWID;
         INSERT INTO names_words SELECT length(term), term FROM names_vocab;
         ANALYZE;",
    )?;
    Ok(conn)
}

fn player_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Player> {
    let tags: String = r.get(5)?;
    Ok(Player {
        id: r.get(0)?,
        level: r.get(1)?,
        score: r.get(2)?,
        guild: r.get(3)?,
        name: r.get(4)?,
        tags: if tags.is_empty() { Vec::new() } else { tags.split(',').map(str::to_owned).collect() },
    })
}

// ---------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------

/// Runs variant `i % variants` of a shape, leaving the records in the vector.
type Run<'a> = Box<dyn FnMut(usize, &mut Vec<Player>) + 'a>;

struct Shape<'a> {
    /// Criterion group name.
    group: &'static str,
    /// Human-readable name.
    title: &'static str,
    sql: String,
    sqlite_setup: &'static str,
    /// Variant 0 for `query_explained`.
    explain: Compiled,
    /// The filters without a page, to count all matches.
    unlimited: Vec<Compiled>,
    params: Vec<Vec<SqlValue>>,
    indexed: Run<'a>,
    scan: Run<'a>,
    sqlite: Run<'a>,
    /// A hand-tuned SQLite alternative, where one exists: (setup, SQL, run).
    tuned: Option<Tuned<'a>>,
    variants: usize,
}

/// A hand-tuned SQLite variant of a shape (a hint or an app-maintained helper table).
struct Tuned<'a> {
    setup: &'static str,
    sql: String,
    run: Run<'a>,
}

fn compile(q: &Query) -> Compiled {
    q.compile().expect("the bench queries compile")
}

fn sqlite_run<'a>(conn: &'a Connection, sql: &str, params: Vec<Vec<SqlValue>>) -> Run<'a> {
    let mut stmt = conn.prepare(sql).expect("the bench SQL prepares");
    Box::new(move |i, out| {
        out.clear();
        let p = &params[i % params.len()];
        let rows = stmt.query_map(params_from_iter(p.iter()), player_from_row).expect("sqlite query");
        for row in rows {
            out.push(row.expect("sqlite row"));
        }
    })
}

fn query_runs<'a>(table: &'a Table<Player>, queries: &[Query]) -> (Run<'a>, Run<'a>) {
    let indexed: Vec<Compiled> = queries.iter().map(compile).collect();
    let scanned = indexed.clone();
    (
        Box::new(move |i, out| {
            out.clear();
            let page = table.query(&indexed[i % indexed.len()]).expect("atoma query");
            out.extend(page.records().cloned());
        }),
        Box::new(move |i, out| {
            out.clear();
            let page = table.scan(&scanned[i % scanned.len()]).expect("atoma scan");
            out.extend(page.records().cloned());
        }),
    )
}

struct ShapeDef {
    group: &'static str,
    title: &'static str,
    queries: Vec<Query>,
    sql: String,
    params: Vec<Vec<SqlValue>>,
    sqlite_setup: &'static str,
    /// A hand-tuned SQL alternative (same parameters): (setup, SQL).
    tuned: Option<(&'static str, String)>,
}

fn shape<'a>(table: &'a Table<Player>, conn: &'a Connection, d: ShapeDef) -> Shape<'a> {
    let (indexed, scan) = query_runs(table, &d.queries);
    let unlimited = d.queries.iter().map(|q| compile(&Query { page: None, ..q.clone() })).collect();
    Shape {
        group: d.group,
        title: d.title,
        explain: compile(&d.queries[0]),
        unlimited,
        sqlite: sqlite_run(conn, &d.sql, d.params.clone()),
        tuned: d.tuned.map(|(setup, sql)| Tuned { setup, run: sqlite_run(conn, &sql, d.params.clone()), sql }),
        sql: d.sql,
        sqlite_setup: d.sqlite_setup,
        params: d.params,
        indexed,
        scan,
        variants: d.queries.len(),
    }
}

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

fn join_sql(fts: &str, cond: &str) -> String {
    let cols = SELECT.split(", ").map(|c| format!("p.{c}")).collect::<Vec<_>>().join(", ");
    format!("SELECT {cols} FROM {fts} f JOIN players p ON p.id = f.rowid WHERE {cond} ORDER BY f.rowid LIMIT 20")
}

fn shapes<'a>(table: &'a Table<Player>, conn: &'a Connection, data: &Data) -> Vec<Shape<'a>> {
    let mut out = Vec::new();

    // Point lookup: `Table::get` (indexed); an `id` eq filter (scan).
    let ids = data.point_ids.clone();
    let scan_qs: Vec<Compiled> = ids.iter().map(|id| compile(&Query::filter(field("id").eq(*id)))).collect();
    let sql = format!("SELECT {SELECT} FROM players WHERE id = ?1");
    let params: Vec<Vec<SqlValue>> =
        ids.iter().map(|id| vec![SqlValue::Integer(i64::try_from(*id).expect("id fits i64"))]).collect();
    let point_ids = ids.clone();
    out.push(Shape {
        group: "point_lookup",
        title: "point lookup by id",
        explain: scan_qs[0].clone(),
        unlimited: Vec::new(),
        sqlite: sqlite_run(conn, &sql, params.clone()),
        tuned: None,
        sql,
        sqlite_setup: "INTEGER PRIMARY KEY (rowid b-tree)",
        params,
        indexed: Box::new(move |i, out| {
            out.clear();
            if let Some(p) = table.get(&point_ids[i % point_ids.len()]) {
                out.push(p.clone());
            }
        }),
        scan: Box::new(move |i, out| {
            out.clear();
            let page = table.scan(&scan_qs[i % scan_qs.len()]).expect("atoma scan");
            out.extend(page.records().cloned());
        }),
        variants: ids.len(),
    });

    out.push(shape(
        table,
        conn,
        ShapeDef {
            group: "eq_guild_limit20",
            title: "eq guild, limit 20",
            queries: data.guilds.iter().map(|g| Query::filter(field("guild").eq(g.as_str())).limit(20)).collect(),
            sql: format!("SELECT {SELECT} FROM players WHERE guild = ?1 ORDER BY id LIMIT 20"),
            params: data.guilds.iter().map(|g| vec![text(g.as_str())]).collect(),
            sqlite_setup: "index players(guild)",
            tuned: None,
        },
    ));

    out.push(shape(
        table,
        conn,
        ShapeDef {
            group: "level_range_by_score_limit20",
            title: "level range, score desc, limit 20",
            queries: data
                .ranges
                .iter()
                .map(|(lo, hi)| Query::filter(field("level").between(*lo, *hi)).sort_desc("score").limit(20))
                .collect(),
            sql: format!("SELECT {SELECT} FROM players WHERE level BETWEEN ?1 AND ?2 ORDER BY score DESC LIMIT 20"),
            params: data
                .ranges
                .iter()
                .map(|(lo, hi)| vec![SqlValue::Integer(i64::from(*lo)), SqlValue::Integer(i64::from(*hi))])
                .collect(),
            sqlite_setup: "indexes players(level), players(score); ANALYZE (stat4)",
            tuned: Some((
                "INDEXED BY players_score (forces the walk down the score index)",
                format!(
                    "SELECT {SELECT} FROM players INDEXED BY players_score WHERE level BETWEEN ?1 AND ?2 \
                     ORDER BY score DESC LIMIT 20"
                ),
            )),
        },
    ));

    out.push(shape(
        table,
        conn,
        ShapeDef {
            group: "text_match_rare",
            title: "text match, rare token, limit 20",
            queries: data.rare.iter().map(|t| Query::filter(field("name").matches(t.as_str())).limit(20)).collect(),
            sql: join_sql("names_fts", "f.name MATCH ?1"),
            params: data.rare.iter().map(|t| vec![text(format!("\"{t}\""))]).collect(),
            sqlite_setup: "FTS5 (unicode61, external content) on name, MATCH",
            tuned: None,
        },
    ));

    out.push(shape(
        table,
        conn,
        ShapeDef {
            group: "fuzzy_name",
            title: "fuzzy (1 edit), limit 20",
            queries: data.fuzzy.iter().map(|w| Query::filter(field("name").fuzzy(w.as_str(), 1)).limit(20)).collect(),
            sql: join_sql(
                "names_fts",
                "f.name MATCH (SELECT group_concat('\"' || term || '\"', ' OR ') FROM names_vocab \
                 WHERE length(term) BETWEEN length(?1) - 1 AND length(?1) + 1 AND lev_within(term, ?1, 1))",
            ),
            params: data.fuzzy.iter().map(|w| vec![text(w.as_str())]).collect(),
            sqlite_setup: "fts5vocab over the FTS5 index + Rust lev_within() UDF, then MATCH t1 OR t2 ...",
            tuned: Some((
                "app-kept vocabulary table names_words(len, term) WITHOUT ROWID, filled from fts5vocab at load",
                join_sql(
                    "names_fts",
                    "f.name MATCH (SELECT group_concat('\"' || term || '\"', ' OR ') FROM names_words \
                     WHERE len BETWEEN length(?1) - 1 AND length(?1) + 1 AND lev_within(term, ?1, 1))",
                ),
            )),
        },
    ));

    out.push(shape(
        table,
        conn,
        ShapeDef {
            group: "contains_name",
            title: "contains on name, limit 20",
            queries: data.needles.iter().map(|s| Query::filter(field("name").contains(s.as_str())).limit(20)).collect(),
            sql: join_sql("names_tri", "f.name GLOB ?1"),
            params: data.needles.iter().map(|s| vec![text(format!("*{s}*"))]).collect(),
            sqlite_setup: "FTS5 trigram tokenizer (case_sensitive 1, external content), GLOB '*needle*'",
            tuned: None,
        },
    ));
    out
}

// ---------------------------------------------------------------------------------------
// Checking, timing, reporting
// ---------------------------------------------------------------------------------------

fn ids(v: &[Player]) -> Vec<u64> {
    v.iter().map(|p| p.id).collect()
}

/// Runs every variant on the three engines: the answers must be equal and not empty.
fn verify(s: &mut Shape<'_>) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..s.variants {
        (s.indexed)(i, &mut a);
        (s.scan)(i, &mut b);
        (s.sqlite)(i, &mut c);
        assert!(!a.is_empty(), "{}: variant {i} matched nothing", s.title);
        assert_eq!(ids(&a), ids(&b), "{}: variant {i}: atoma indexed vs scan differ", s.title);
        assert_eq!(ids(&a), ids(&c), "{}: variant {i}: atoma vs SQLite differ (params {:?})", s.title, s.params[i]);
        assert!(a == b && a == c, "{}: variant {i}: same ids but different records", s.title);
        if let Some(t) = &mut s.tuned {
            (t.run)(i, &mut c);
            assert!(a == c, "{}: variant {i}: atoma vs tuned SQLite differ", s.title);
        }
    }
}

fn sqlite_plan(conn: &Connection, sql: &str, params: &[SqlValue]) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("EXPLAIN QUERY PLAN prepares");
    let rows =
        stmt.query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3)).expect("EXPLAIN QUERY PLAN runs");
    rows.map(|r| r.expect("plan row")).collect::<Vec<_>>().join(" / ")
}

/// Time per call over `RUNS` runs of a calibrated number of calls (~20 ms each): the median
/// run and the fastest run.
fn time_per_call(run: &mut Run<'_>) -> Timing {
    const RUNS: usize = 9;
    let mut out = Vec::new();
    let mut i = 0usize;
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || (start.elapsed() < Duration::from_millis(50) && calls < 1_000_000) {
        run(i, &mut out);
        i += 1;
        calls += 1;
    }
    let per = start.elapsed() / calls;
    let iters = u32::try_from((20_000_000 / per.as_nanos().max(1)).clamp(1, 10_000_000)).expect("fits u32");
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                run(i, &mut out);
                black_box(&out);
                i += 1;
            }
            t.elapsed() / iters
        })
        .collect();
    samples.sort();
    Timing { median: samples[RUNS / 2], best: samples[0] }
}

/// A timing: the median run and the fastest run.
#[derive(Clone, Copy)]
struct Timing {
    median: Duration,
    best: Duration,
}

fn fmt_dur(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 { format!("{:.1} MiB", b / (1024.0 * 1024.0)) } else { format!("{:.1} KiB", b / 1024.0) }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "n/a".to_owned(), |s| s.trim().to_owned())
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Builds a second table index by index and reports how much the process RSS grew for each
/// index, next to the engine's own estimate (`index_sizes`).
fn rss_check(players: &[Player], per_million: f64) {
    let Some(start) = rss_kib() else {
        println!("(RSS cross-check skipped: no /proc/self/status)");
        return;
    };
    let mut t: Table<Player> = Table::new(Vec::new());
    t.apply(players.iter().cloned().map(|p| (p.id, Some(Entry::new(p, 1)))));
    let records = rss_kib().unwrap_or(start).saturating_sub(start);
    println!(
        "RSS cross-check (a separate table, indexes added one by one with add_index; per 1M records):\n  \
         records + id map: {}",
        fmt_bytes(records as f64 * 1024.0 * per_million)
    );
    let mut total_rss = 0u64;
    for spec in specs() {
        let before = rss_kib().unwrap_or(0);
        t.add_index(spec.clone());
        let grew = rss_kib().unwrap_or(0).saturating_sub(before);
        total_rss += grew;
        let est = t.index_sizes().last().map_or(0, |(_, b)| *b);
        println!(
            "  {:<10} {:<10} RSS +{:>10}   index_sizes {:>10}",
            spec.field,
            format!("{:?}", spec.kind),
            fmt_bytes(grew as f64 * 1024.0 * per_million),
            fmt_bytes(est as f64 * per_million)
        );
    }
    println!(
        "  total      RSS +{}   index_heap_size {}\n",
        fmt_bytes(total_rss as f64 * 1024.0 * per_million),
        fmt_bytes(t.index_heap_size() as f64 * per_million)
    );
}

struct Row {
    title: &'static str,
    indexed: Timing,
    scan: Timing,
    sqlite: Timing,
    tuned: Option<Timing>,
}

fn main() {
    let n: usize = std::env::var("ATOMA_BENCH_N")
        .ok()
        .map(|s| s.replace('_', "").parse().expect("ATOMA_BENCH_N is a number"))
        .unwrap_or(1_000_000);
    let per_million = 1e6 / n as f64;
    println!("atoma query bench: {n} records; load average at start: {}", load_average());

    let t = Instant::now();
    let data = Data::generate(n);
    println!("generated in {}", fmt_dur(t.elapsed()));

    if std::env::var("ATOMA_BENCH_RSS").as_deref() != Ok("0") {
        rss_check(&data.players, per_million);
    }

    let t = Instant::now();
    let conn = load_sqlite(&data.players).expect("SQLite loads");
    let sqlite_load = t.elapsed();
    let mut data = data;
    let players = std::mem::take(&mut data.players);
    let t = Instant::now();
    let table = load_atoma(players);
    let atoma_load = t.elapsed();
    assert_eq!(table.len(), n);
    println!(
        "load: atoma {} (Table::new + apply, 6 indexes), SQLite {} (insert, CREATE INDEX x3, FTS5 x2 rebuild+optimize, ANALYZE)",
        fmt_dur(atoma_load),
        fmt_dur(sqlite_load)
    );

    println!("\natoma index memory (index_sizes; scaled to 1M records):");
    for (spec, bytes) in table.index_sizes() {
        println!(
            "  {:<6} {:<10} {:>10}",
            spec.field,
            format!("{:?}", spec.kind),
            fmt_bytes(bytes as f64 * per_million)
        );
    }
    println!("  total             {:>10}", fmt_bytes(table.index_heap_size() as f64 * per_million));

    println!("\nSQLite pages per object (dbstat; scaled to 1M records):");
    {
        let mut stmt =
            conn.prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY name").expect("dbstat prepares");
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).expect("dbstat");
        for row in rows {
            let (name, bytes) = row.expect("dbstat row");
            println!("  {name:<20} {:>10}", fmt_bytes(bytes as f64 * per_million));
        }
    }

    let mut all = shapes(&table, &conn, &data);
    println!("\nShapes (checked: atoma indexed, atoma scan and SQLite return the same records):");
    for s in &mut all {
        verify(s);
        let matches: Vec<usize> =
            s.unlimited.iter().map(|q| table.query(q).expect("count query").items.len()).collect();
        let (_, ex) = table.query_explained(&s.explain).expect("explain");
        println!("  {}", s.title);
        if !matches.is_empty() {
            let min = matches.iter().min().copied().unwrap_or(0);
            let max = matches.iter().max().copied().unwrap_or(0);
            println!("    variants {}, matches per variant {min}..={max}", s.variants);
        } else {
            println!("    variants {}", s.variants);
        }
        println!("    atoma explain (variant 0): {ex:?}");
        println!("    sqlite: {}", s.sqlite_setup);
        println!("    sql: {}", s.sql);
        println!("    sqlite plan: {}", sqlite_plan(&conn, &s.sql, &s.params[0]));
        if let Some(t) = &s.tuned {
            println!("    sqlite tuned: {}", t.setup);
            println!("    tuned sql: {}", t.sql);
            println!("    tuned plan: {}", sqlite_plan(&conn, &t.sql, &s.params[0]));
        }
    }
    println!();

    let mut c = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    for s in &mut all {
        let row = Row {
            title: s.title,
            indexed: time_per_call(&mut s.indexed),
            scan: time_per_call(&mut s.scan),
            sqlite: time_per_call(&mut s.sqlite),
            tuned: s.tuned.as_mut().map(|t| time_per_call(&mut t.run)),
        };
        let mut g = c.benchmark_group(s.group);
        g.warm_up_time(Duration::from_millis(500));
        let mut runs = vec![
            ("atoma_indexed", row.indexed.median, &mut s.indexed),
            ("sqlite", row.sqlite.median, &mut s.sqlite),
            ("atoma_scan", row.scan.median, &mut s.scan),
        ];
        if let (Some(t), Some(est)) = (&mut s.tuned, row.tuned) {
            runs.insert(2, ("sqlite_tuned", est.median, &mut t.run));
        }
        for (name, est, run) in runs {
            // Fast functions: criterion's defaults (100 samples) in 2 s. Slow ones (scans
            // of a million records): 10 flat samples.
            if est < Duration::from_micros(100) {
                g.sample_size(100).sampling_mode(SamplingMode::Auto).measurement_time(Duration::from_secs(2));
            } else {
                let time = (est * 12).clamp(Duration::from_secs(1), Duration::from_secs(60));
                g.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(time);
            }
            g.bench_function(name, |b| {
                let mut i = 0usize;
                let mut out = Vec::new();
                b.iter(|| {
                    run(i, &mut out);
                    i = i.wrapping_add(1);
                    out.len()
                });
            });
        }
        g.finish();
        rows.push(row);
    }
    c.final_summary();
    println!("load average at the end: {}", load_average());
    let extras = extra_timings(&table, &data);
    report(&rows, &extras, &table, n, (atoma_load, sqlite_load));
}

/// Timings that split the point lookup and show the fixed cost of a query.
fn extra_timings<'a>(table: &Table<Player>, data: &Data) -> Vec<(&'a str, Timing)> {
    let ids = &data.point_ids;
    let id_queries: Vec<Compiled> = ids.iter().map(|id| compile(&Query::filter(field("id").eq(*id)))).collect();
    let guild = compile(&Query::filter(field("guild").eq(data.guilds[0].as_str())).limit(20));
    let mut borrow: Run<'_> = Box::new(|i, _| {
        black_box(table.get(&ids[i % ids.len()]));
    });
    let mut id_query: Run<'_> = Box::new(|i, out| {
        out.clear();
        let page = table.query(&id_queries[i % id_queries.len()]).expect("atoma query");
        out.extend(page.records().cloned());
    });
    let mut guild_no_clone: Run<'_> = Box::new(|_, _| {
        black_box(table.query(&guild).expect("atoma query").items.len());
    });
    vec![
        ("point lookup: table.get, borrowed (no clone)", time_per_call(&mut borrow)),
        ("point lookup through the planner: query(id eq), cloned", time_per_call(&mut id_query)),
        ("eq guild limit 20: query only, no clone (one guild)", time_per_call(&mut guild_no_clone)),
    ]
}

/// Prints the summary tables and the targets.
fn report(rows: &[Row], extras: &[(&str, Timing)], table: &Table<Player>, n: usize, loads: (Duration, Duration)) {
    let per_million = 1e6 / n as f64;
    let mut out = String::new();
    for (label, pick) in [
        ("median of 9 timed runs", (|t: Timing| t.median) as fn(Timing) -> Duration),
        ("fastest of the 9 runs", |t: Timing| t.best),
    ] {
        let _ = writeln!(out, "\nSummary ({n} records; time per call, {label}, cycling through the variants):");
        let _ = writeln!(
            out,
            "| {:<34} | {:>13} | {:>11} | {:>11} | {:>12} | {:>12} | {:>11} | {:>10} |",
            "shape",
            "atoma indexed",
            "atoma scan",
            "sqlite",
            "sqlite tuned",
            "sqlite/atoma",
            "tuned/atoma",
            "scan/atoma"
        );
        let _ = writeln!(
            out,
            "|{:-<36}|{:->15}|{:->13}|{:->13}|{:->14}|{:->14}|{:->13}|{:->12}|",
            "", "", "", "", "", "", "", ""
        );
        for r in rows {
            let ratio = |t: Timing| pick(t).as_secs_f64() / pick(r.indexed).as_secs_f64();
            let _ = writeln!(
                out,
                "| {:<34} | {:>13} | {:>11} | {:>11} | {:>12} | {:>11.1}x | {:>11} | {:>9.0}x |",
                r.title,
                fmt_dur(pick(r.indexed)),
                fmt_dur(pick(r.scan)),
                fmt_dur(pick(r.sqlite)),
                r.tuned.map_or("-".to_owned(), |t| fmt_dur(pick(t))),
                ratio(r.sqlite),
                r.tuned.map_or("-".to_owned(), |t| format!("{:.1}x", ratio(t))),
                ratio(r.scan)
            );
        }
    }
    let _ = writeln!(out, "\nOther atoma timings (median / fastest run):");
    for (label, t) in extras {
        let _ = writeln!(out, "  {label:<58} {:>10} / {:>10}", fmt_dur(t.median), fmt_dur(t.best));
    }
    let fastest_sqlite = |r: &Row| r.tuned.map_or(r.sqlite.median, |t| t.median.min(r.sqlite.median));
    let behind: Vec<&str> = rows.iter().filter(|r| r.indexed.median >= fastest_sqlite(r)).map(|r| r.title).collect();
    let _ = writeln!(
        out,
        "\nTargets (medians):\n  atoma indexed ahead of SQLite (plain and tuned) on every shape: {}",
        if behind.is_empty() { "yes".to_owned() } else { format!("NO - behind on: {}", behind.join("; ")) }
    );
    let target = |title: &str, limit: Duration| {
        rows.iter().find(|r| r.title == title).map_or("n/a".to_owned(), |r| {
            let verdict = if r.indexed.median < limit { "met" } else { "MISSED" };
            format!("{verdict} (median {}, fastest run {})", fmt_dur(r.indexed.median), fmt_dur(r.indexed.best))
        })
    };
    let _ = writeln!(out, "  point lookup < 300 ns: {}", target("point lookup by id", Duration::from_nanos(300)));
    let _ = writeln!(out, "  eq ... limit 20 < 5 µs: {}", target("eq guild, limit 20", Duration::from_micros(5)));
    let _ = writeln!(
        out,
        "  index memory per 1M records (index_heap_size): {}; load: atoma {}, SQLite {}",
        fmt_bytes(table.index_heap_size() as f64 * per_million),
        fmt_dur(loads.0),
        fmt_dur(loads.1)
    );
    println!("{out}");
}
