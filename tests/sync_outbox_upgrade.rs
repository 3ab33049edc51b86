//! A data file whose outbox was written before the outbox's indexes (items as JSON, no index
//! tables, no layout row) opens with this version: its queued writes are counted, indexed on
//! the first write, and pushed to the real atoma-server — in order, compacted, the one that
//! was in flight at the crash sent again as it was.

mod common;

use std::time::Duration;

use atoma::io::outbox::{self, ItemState};
use atoma::io::{SyncConfig, SyncMode};
use atoma::prelude::*;
use atoma::runtime::SyncStatus;
use bevy_app::App;
use common::server::{TestServer, temp_dir};
use common::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

fn client(url: &str, dir: &std::path::Path, mode: SyncMode) -> App {
    let mut config = SyncConfig::new(url).mode(mode);
    config.pull_interval = Duration::from_millis(200);
    config.retry.base = Duration::from_millis(20);
    config.retry.max = Duration::from_millis(200);
    app(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"), |app| {
        app.add_store::<Player>(StoreConfig::default());
    })
}

fn store(app: &App) -> &Store<Player> {
    app.world().resource::<Store<Player>>()
}

fn status(app: &App) -> SyncStatus {
    app.world().resource::<SyncStatus>().clone()
}

/// Opens the data file once the app that had it open has let it go.
fn open(path: &std::path::Path) -> redb::Database {
    let start = std::time::Instant::now();
    loop {
        match redb::Database::open(path) {
            Ok(db) => return db,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(5), "the file reopens: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Rewrites a data file's outbox the way files were written before the indexes: each item as
/// the JSON of `OutboxItem`, the index tables and the layout row gone. Marks the oldest item
/// in flight (a crash while it was pushed).
fn downgrade_to_the_old_layout(path: &std::path::Path) -> usize {
    let db = open(path);
    let mut items = outbox::items(&db).expect("the outbox reads");
    if let Some(first) = items.first_mut() {
        first.state = ItemState::InFlight { since_ms: 1 };
        first.sent = true;
    }
    let txn = db.begin_write().expect("a write");
    {
        let mut table = txn.open_table(TableDefinition::<u64, &[u8]>::new("sync/outbox")).expect("items");
        for it in &items {
            table.insert(it.seq, serde_json::to_vec(it).expect("json").as_slice()).expect("insert");
        }
        let mut meta = txn.open_table(TableDefinition::<&str, &[u8]>::new("sync/meta")).expect("meta");
        assert!(meta.remove("indexed-through").expect("remove").is_some(), "the indexes were written");
    }
    for name in ["sync/outbox-by-record", "sync/outbox-ready", "sync/outbox-waiting", "sync/outbox-in-flight"] {
        txn.delete_table(TableDefinition::<u64, u64>::new(name)).expect("delete");
    }
    txn.commit().expect("commit");
    let txn = db.begin_read().expect("a read");
    let table = txn.open_table(TableDefinition::<u64, &[u8]>::new("sync/outbox")).expect("items");
    let first = table.iter().expect("iter").next().expect("an item").expect("row").1.value().to_vec();
    assert_eq!(first.first(), Some(&b'{'), "JSON, as before");
    items.len()
}

#[test]
fn an_outbox_from_before_the_indexes_is_pushed() {
    let server = TestServer::open();
    let dir = temp_dir("sync-upgrade");
    // Writes queued while only pulling (nothing pushed): 3 creates, then an update of one
    // of them and an increment of another.
    {
        let mut a = client(&server.url, &dir, SyncMode::PullOnly);
        a.update();
        a.world_mut()
            .run_system_cached(|mut w: Writer<Player>| {
                for i in 1..=3 {
                    w.create(player(i, "old", 1));
                }
            })
            .expect("runs");
        assert!(settle::<Player>(&mut a, 3).iter().all(|s| s.is_ok()));
        a.world_mut()
            .run_system_cached(|mut w: Writer<Player>| {
                w.update(2, |p| p.name = "updated".into());
                w.inc(3, "gold", 5);
            })
            .expect("runs");
        assert!(settle::<Player>(&mut a, 2).iter().all(|s| s.is_ok()));
    }
    let path = dir.join("atoma.redb");
    assert_eq!(downgrade_to_the_old_layout(&path), 5);
    {
        let db = open(&path);
        let s = outbox::stats(&db).expect("old files are counted by reading them");
        assert_eq!((s.pending, s.in_flight, s.dead, s.last_seq), (4, 1, 0, 5));
    }
    // This version, pushing: the in-flight create is recovered and sent again, the update is
    // compacted into its create, the increment follows its create.
    let mut a = client(&server.url, &dir, SyncMode::Full);
    let mut b = client(&server.url, &temp_dir("sync-upgrade-b"), SyncMode::Full);
    let start = std::time::Instant::now();
    let done = loop {
        a.update();
        b.update();
        let s = status(&a);
        if store(&b).len() == 3 && s.pending == 0 && s.in_flight == 0 && store(&b).get(&3).is_some_and(|p| p.gold == 5)
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(done, "pushed and pulled back: a {:?}, b has {}", status(&a), store(&b).len());
    assert_eq!(store(&b).get(&1).map(|p| p.name.clone()), Some("old".into()));
    assert_eq!(store(&b).get(&2).map(|p| p.name.clone()), Some("updated".into()));
    assert!(status(&a).dead_letters.is_empty(), "{:?}", status(&a).dead_letters);
}
