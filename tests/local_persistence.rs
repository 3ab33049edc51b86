//! The `local` route — records in one redb file, the embedded default — proved end to end:
//! writes survive a restart with their versions, a frame's writes to several stores are one
//! redb transaction, older record files still load, and a damaged or locked data file is a
//! clear error instead of a panic (and is never touched).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use atoma::io::{BoxFuture, Executor, LoadedRecord, LocalExecutor, OpenError};
use atoma::prelude::*;
use atoma::protocol::{
    ItemMeta, QueryRequest, QueryResult, StandardError, WireWriteEntry, WriteItem, WriteRequest, WriteResult,
};
use atoma::runtime::{AtomaStatus, Route};
use bevy_app::App;
use bevy_ecs::prelude::*;
use common::{Player, app, player, settle};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A fresh, empty folder for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("atoma-test-{}-{}", std::process::id(), name));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join("atoma.redb")
}

fn local_app<T: Record>(dir: &Path) -> App {
    app(AtomaPlugin::default().data_dir(dir), |app| {
        app.add_store::<T>(StoreConfig::default());
    })
}

fn errors(app: &App) -> Vec<String> {
    app.world().resource::<AtomaStatus>().errors.clone()
}

/// Every record of store `T` with its version, sorted by id.
fn snapshot<T: Record + Clone>(app: &App) -> Vec<(String, T, u64)>
where
    T::Id: Ord,
{
    let mut v: Vec<_> = app
        .world()
        .resource::<Store<T>>()
        .table()
        .iter()
        .map(|e| (e.record.id().clone(), T::clone(&*e.record), e.version))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(id, r, ver)| (id.to_string(), r, ver)).collect()
}

/// Runs a writing system (a non-capturing closure) once and waits until its `n` writes settled; all must succeed.
fn write_ok<T: Record + std::fmt::Debug, M>(
    app: &mut App,
    n: usize,
    f: impl IntoSystem<(), (), M> + 'static,
) -> Vec<WriteSettled<T>> {
    app.world_mut().run_system_cached(f).expect("the writing system runs");
    let results = settle::<T>(app, n);
    assert_eq!(results.len(), n, "every write settles");
    for r in &results {
        assert!(r.is_ok(), "{:?}", r.result);
    }
    results
}

/// The stored records of a resource as `(id, JSON, version)`, straight from the file.
fn on_disk(exec: &LocalExecutor, resource: &str) -> Vec<(String, serde_json::Value, u64)> {
    let mut v: Vec<_> = exec
        .load_now(resource)
        .expect("the file reads")
        .into_iter()
        .map(|(m, version)| {
            let id = m.get("id").and_then(|i| i.as_str()).expect("a stored record has a string id").to_owned();
            (id, serde_json::Value::Object(m), version)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn writes_through_the_default_route_survive_a_restart_with_their_versions() {
    let dir = fresh_dir("restart");
    let mut a = local_app::<Player>(&dir);
    assert_eq!(errors(&a), Vec::<String>::new());
    assert!(a.world().resource::<Store<Player>>().is_empty(), "a new file starts empty");

    let created = write_ok::<Player, _>(&mut a, 5, |mut w: Writer<Player>| {
        for i in 1..=5 {
            w.create(player(i, &format!("p{i}"), i64::from(i)));
        }
    });
    assert!(created.iter().all(|s| s.result.as_ref().ok() == Some(&Some(1))), "{created:?}");

    // Updates, deletes and patch ops in one frame (two increments of one record are sent one
    // after the other, the second based on the first's version).
    write_ok::<Player, _>(&mut a, 5, |mut w: Writer<Player>| {
        w.update(1, |p| p.level = 10);
        w.delete(2);
        w.inc(3, "gold", 7);
        w.inc(3, "gold", 1);
        w.update(4, |p| p.guild = Some("owls".into()));
    });
    a.update();
    let before = snapshot::<Player>(&a);
    let expected = vec![
        ("1".to_owned(), Player { level: 10, ..player(1, "p1", 1) }, 2),
        ("3".to_owned(), Player { gold: 8, ..player(3, "p3", 3) }, 3),
        ("4".to_owned(), Player { guild: Some("owls".into()), ..player(4, "p4", 4) }, 2),
        ("5".to_owned(), player(5, "p5", 5), 1),
    ];
    assert_eq!(before, expected, "the store holds the acked versions");
    drop(a);

    // A second app on the same folder loads the same records, with the same versions.
    let mut b = local_app::<Player>(&dir);
    assert_eq!(errors(&b), Vec::<String>::new());
    assert_eq!(snapshot::<Player>(&b), expected, "loaded back after a restart");

    // Queries through the route read the file too.
    b.world_mut()
        .run_system_cached(|mut r: Reader<Player>| {
            r.fetch(atoma::Query::filter(field("level").gte(4)).sort_desc("level"), FetchPolicy::NetworkOnly);
        })
        .expect("runs");
    let mut reads = Vec::new();
    assert!(common::run_until(&mut b, |app| {
        reads.extend(app.world_mut().resource_mut::<bevy_ecs::message::Messages<ReadFinished<Player>>>().drain());
        !reads.is_empty()
    }));
    assert_eq!(reads[0].source, atoma::runtime::ReadSource::Remote);
    assert_eq!(reads[0].ids, [1, 5, 4]);

    // And carries on from them: the next write is based on the loaded version.
    let r = write_ok::<Player, _>(&mut b, 1, |mut w: Writer<Player>| {
        w.inc(3, "gold", 2);
    });
    assert_eq!(r[0].result.as_ref().ok(), Some(&Some(4)));
    drop(b);
    let exec = LocalExecutor::open(data_file(&dir)).expect("the file opens after the app is gone");
    let disk = on_disk(&exec, "players");
    assert_eq!(
        disk.iter().map(|(id, _, v)| (id.as_str(), *v)).collect::<Vec<_>>(),
        [("1", 2), ("3", 4), ("4", 2), ("5", 1)]
    );
    assert_eq!(disk[1].1["gold"], json!(10));
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[record(store = "items")]
struct Item {
    id: u32,
    owner: u32,
    name: String,
}

/// A route around a real `LocalExecutor` that records each `write_many` call (the resources
/// it carried) and each single `write`, then hands the call on unchanged.
#[derive(Clone)]
struct Counting {
    inner: LocalExecutor,
    write_many: Arc<Mutex<Vec<Vec<String>>>>,
    single_writes: Arc<AtomicUsize>,
}

impl Executor for Counting {
    fn query(&self, req: QueryRequest) -> BoxFuture<Result<QueryResult, StandardError>> {
        self.inner.query(req)
    }
    fn write(&self, req: WriteRequest) -> BoxFuture<Result<WriteResult, StandardError>> {
        self.single_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(req)
    }
    fn write_many(&self, reqs: Vec<WriteRequest>) -> BoxFuture<Vec<Result<WriteResult, StandardError>>> {
        let mut resources: Vec<String> = reqs.iter().map(|r| r.resource.clone()).collect();
        resources.sort();
        self.write_many.lock().expect("not poisoned").push(resources);
        self.inner.write_many(reqs)
    }
    fn load(&self, resource: &str) -> Option<BoxFuture<Result<Vec<LoadedRecord>, StandardError>>> {
        self.inner.load(resource)
    }
}

#[test]
fn a_frames_writes_to_two_stores_are_one_redb_transaction() {
    let dir = fresh_dir("one-txn");
    let counted_file = dir.join("counted.redb");
    let counting = Counting {
        inner: LocalExecutor::open(&counted_file).expect("opens"),
        write_many: Arc::default(),
        single_writes: Arc::default(),
    };
    let calls = counting.write_many.clone();
    let singles = counting.single_writes.clone();
    let plugin = AtomaPlugin::default().data_dir(&dir).route("counted", Route::new(counting)).default_route("counted");
    let mut a = app(plugin, |app| {
        app.add_store::<Player>(StoreConfig::default());
        app.add_store::<Item>(StoreConfig::default());
    });
    assert_eq!(errors(&a), Vec::<String>::new());
    a.world_mut()
        .run_system_cached(|mut p: Writer<Player>, mut i: Writer<Item>| {
            for n in 1..=3 {
                p.create(player(n, &format!("p{n}"), 1));
            }
            i.create(Item { id: 1, owner: 1, name: "sword".into() });
            i.create(Item { id: 2, owner: 3, name: "shield".into() });
        })
        .expect("runs");
    let players = settle::<Player>(&mut a, 3);
    let items = settle::<Item>(&mut a, 2);
    assert!(players.iter().all(WriteSettled::is_ok), "{players:?}");
    assert!(items.iter().all(WriteSettled::is_ok), "{items:?}");
    assert_eq!(
        *calls.lock().expect("not poisoned"),
        vec![vec!["items".to_owned(), "players".to_owned()]],
        "one write_many call — one redb transaction — carried both stores' writes"
    );
    assert_eq!(singles.load(Ordering::SeqCst), 0, "nothing went around it");

    // A frame that writes only one store sends only that store.
    write_ok::<Item, _>(&mut a, 1, |mut w: Writer<Item>| {
        w.update(2, |i| i.name = "tower shield".into());
    });
    assert_eq!(calls.lock().expect("not poisoned").len(), 2);
    assert_eq!(calls.lock().expect("not poisoned")[1], vec!["items".to_owned()]);
    drop(a);

    // Both stores' records are in the one file.
    let exec = LocalExecutor::open(&counted_file).expect("opens after the app is gone");
    let p = on_disk(&exec, "players");
    let i = on_disk(&exec, "items");
    assert_eq!(p.iter().map(|(id, _, v)| (id.as_str(), *v)).collect::<Vec<_>>(), [("1", 1), ("2", 1), ("3", 1)]);
    assert_eq!(i.iter().map(|(id, _, v)| (id.as_str(), *v)).collect::<Vec<_>>(), [("1", 1), ("2", 2)]);
    assert_eq!(i[1].1["name"], json!("tower shield"));
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

mod v1 {
    use super::*;

    /// The record as an older build saved it: fewer fields.
    #[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[record(store = "players")]
    pub struct Player {
        pub id: u32,
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rank: Option<String>,
    }
}

mod v2 {
    use super::*;

    fn novice() -> String {
        "novice".into()
    }

    /// The record as this build knows it: new fields with defaults.
    #[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[record(store = "players")]
    pub struct Player {
        pub id: u32,
        pub name: String,
        #[serde(default)]
        pub level: i64,
        #[serde(default = "novice")]
        pub title: String,
    }

    /// A build where `rank` changed type: a stored text rank no longer fits.
    #[derive(Record, Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[record(store = "players")]
    pub struct Ranked {
        pub id: u32,
        pub name: String,
        #[serde(default)]
        pub rank: Option<u32>,
    }
}

#[test]
fn a_record_file_from_an_older_build_with_fewer_fields_still_loads() {
    let dir = fresh_dir("older-build");
    let mut old = local_app::<v1::Player>(&dir);
    write_ok::<v1::Player, _>(&mut old, 3, |mut w: Writer<v1::Player>| {
        for i in 1..=3 {
            w.create(v1::Player { id: i, name: format!("p{i}"), rank: None });
        }
    });
    drop(old);

    let mut new = local_app::<v2::Player>(&dir);
    assert_eq!(errors(&new), Vec::<String>::new());
    let loaded = snapshot::<v2::Player>(&new);
    let expected: Vec<_> = (1..=3)
        .map(|i| (i.to_string(), v2::Player { id: i, name: format!("p{i}"), level: 0, title: "novice".into() }, 1))
        .collect();
    assert_eq!(loaded, expected, "missing fields take their defaults");

    // The new build writes its fields; a restart keeps them.
    write_ok::<v2::Player, _>(&mut new, 1, |mut w: Writer<v2::Player>| {
        w.update(2, |p| {
            p.level = 9;
            p.title = "knight".into();
        });
    });
    drop(new);
    let new = local_app::<v2::Player>(&dir);
    let p2 = new.world().resource::<Store<v2::Player>>().entry(&2).map(|e| (v2::Player::clone(&*e.record), e.version));
    assert_eq!(p2, Some((v2::Player { id: 2, name: "p2".into(), level: 9, title: "knight".into() }, 2)));
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stored_record_that_no_longer_fits_is_reported_and_left_on_disk_untouched() {
    let dir = fresh_dir("misfit");
    let mut old = local_app::<v1::Player>(&dir);
    write_ok::<v1::Player, _>(&mut old, 3, |mut w: Writer<v1::Player>| {
        w.create(v1::Player { id: 1, name: "ann".into(), rank: None });
        w.create(v1::Player { id: 2, name: "bob".into(), rank: Some("gold".into()) });
        w.create(v1::Player { id: 3, name: "cy".into(), rank: None });
    });
    drop(old);
    let exec = LocalExecutor::open(data_file(&dir)).expect("opens");
    let stored_misfit = on_disk(&exec, "players").into_iter().find(|r| r.0 == "2").expect("record 2 is stored");
    drop(exec);

    let mut new = local_app::<v2::Ranked>(&dir);
    let errs = errors(&new);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("players") && errs[0].contains("1 stored record(s)"), "{errs:?}");
    assert!(errs[0].contains("left on disk untouched"), "{errs:?}");
    let loaded = snapshot::<v2::Ranked>(&new);
    assert_eq!(
        loaded.iter().map(|(id, r, v)| (id.as_str(), r.name.as_str(), r.rank, *v)).collect::<Vec<_>>(),
        [("1", "ann", None, 1), ("3", "cy", None, 1)],
        "the others load"
    );

    // Writing the others, and trying to write over the misfit, leaves it as it was.
    write_ok::<v2::Ranked, _>(&mut new, 2, |mut w: Writer<v2::Ranked>| {
        w.update(1, |p| p.rank = Some(5));
        w.delete(3);
    });
    new.world_mut()
        .run_system_cached(|mut w: Writer<v2::Ranked>| {
            w.create(v2::Ranked { id: 2, name: "new bob".into(), rank: Some(1) });
        })
        .expect("runs");
    let r = settle::<v2::Ranked>(&mut new, 1);
    assert!(matches!(r[0].result, Err(WriteFailure::Remote { .. })), "the file has a record 2: {:?}", r[0].result);
    new.update();
    assert!(!new.world().resource::<Store<v2::Ranked>>().contains(&2), "the failed create was rolled back");
    drop(new);

    let exec = LocalExecutor::open(data_file(&dir)).expect("opens");
    let disk = on_disk(&exec, "players");
    assert_eq!(disk.len(), 2, "{disk:?}");
    assert_eq!(disk[0].1["rank"], json!(5));
    assert_eq!(disk[1], stored_misfit, "the record that does not fit is untouched");
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deterministic garbage (xorshift64*).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn a_corrupt_data_file_is_a_clear_error_and_is_left_untouched() {
    for (n, len) in [(0, 64 * 1024), (1, 4096), (2, 100), (3, 1)] {
        let dir = fresh_dir(&format!("corrupt-{n}"));
        std::fs::create_dir_all(&dir).expect("creates the folder");
        let file = data_file(&dir);
        let bytes = garbage(len, 0x9E37_79B9_7F4A_7C15 ^ n);
        std::fs::write(&file, &bytes).expect("writes garbage");

        match AtomaPlugin::default().data_dir(&dir).open() {
            Err(OpenError::Corrupt { path, .. }) => assert_eq!(path, file),
            Err(e) => panic!("{len} bytes of garbage: expected Corrupt, got {e}"),
            Ok(_) => panic!("{len} bytes of garbage opened as a data file"),
        }

        let mut a = local_app::<Player>(&dir);
        let errs = errors(&a);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains(&file.display().to_string()), "names the file: {errs:?}");
        assert!(errs[0].contains("damaged"), "{errs:?}");
        // The app runs; writes settle with a clear error and change nothing.
        for _ in 0..3 {
            a.update();
        }
        a.world_mut()
            .run_system_cached(|mut w: Writer<Player>| {
                w.create(player(1, "ann", 1));
            })
            .expect("runs");
        let r = settle::<Player>(&mut a, 1);
        assert_eq!(r.len(), 1);
        match &r[0].result {
            Err(e @ WriteFailure::Unavailable { error, .. }) => {
                assert_eq!(error.code, "DATA_FILE");
                assert!(e.to_string().contains("damaged"), "{e}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        a.update();
        assert!(a.world().resource::<Store<Player>>().is_empty());
        drop(a);
        assert!(std::fs::read(&file).expect("still there") == bytes, "the damaged file is untouched ({len} bytes)");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_data_file_held_open_in_this_process_is_reported_in_use() {
    let dir = fresh_dir("locked");
    let file = data_file(&dir);
    let holder = LocalExecutor::open(&file).expect("the holder opens the file");

    match AtomaPlugin::default().data_dir(&dir).open() {
        Err(OpenError::Locked { path }) => assert_eq!(path, file),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("opened a file another handle holds"),
    }
    let mut a = local_app::<Player>(&dir);
    let errs = errors(&a);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("in use") && errs[0].contains(&file.display().to_string()), "{errs:?}");
    a.world_mut()
        .run_system_cached(|mut w: Writer<Player>| {
            w.create(player(1, "ann", 1));
        })
        .expect("runs");
    let r = settle::<Player>(&mut a, 1);
    match &r[0].result {
        Err(e @ WriteFailure::Unavailable { .. }) => assert!(e.to_string().contains("in use"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(a);
    drop(holder);

    let mut b = local_app::<Player>(&dir);
    assert_eq!(errors(&b), Vec::<String>::new(), "free once the holder is gone");
    write_ok::<Player, _>(&mut b, 1, |mut w: Writer<Player>| {
        w.create(player(1, "ann", 1));
    });
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

const HOLDER_ENV: &str = "ATOMA_LOCK_HOLDER";

/// Not a test on its own: the child process of the test below. Holds the data file open
/// until its stdin closes.
#[test]
fn lock_holder_child() {
    let Some(file) = std::env::var_os(HOLDER_ENV) else { return };
    let exec = LocalExecutor::open(PathBuf::from(file)).expect("the child opens the file");
    let mut out = std::io::stdout().lock();
    writeln!(out, "HELD").expect("stdout");
    out.flush().expect("stdout");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    drop(exec);
}

#[test]
fn a_data_file_held_open_by_another_process_is_reported_in_use() {
    let dir = fresh_dir("locked-by-process");
    let file = data_file(&dir);
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "lock_holder_child", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, &file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns the holder");
    // Read the child's output on a thread, so that a child that never says HELD fails the
    // test instead of hanging it. (libtest prints `test lock_holder_child ... ` first, on the
    // same line.)
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_end().ends_with("HELD") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(std::time::Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        panic!("the child never reported holding the file");
    }

    let result = AtomaPlugin::default().data_dir(&dir).open();
    let locked = matches!(&result, Err(OpenError::Locked { path }) if *path == file);
    let a = local_app::<Player>(&dir);
    let errs = errors(&a);
    drop(a);
    drop(result);
    drop(child.stdin.take());
    let status = child.wait().expect("the holder exits");
    reader.join().expect("the reader thread ends with the child's output");
    assert!(locked, "expected Locked while another process holds the file");
    assert!(errs.len() == 1 && errs[0].contains("in use"), "{errs:?}");
    assert!(status.success(), "the holder exited cleanly: {status}");

    let exec = LocalExecutor::open(&file).expect("free once the other process is gone");
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

fn create_entry(entry_id: &str, id: &str, name: &str, key: &str) -> WireWriteEntry {
    WireWriteEntry {
        entry_id: entry_id.into(),
        action: atoma::core::WriteAction::Create,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: None,
            value: Some(json!({ "id": id, "name": name, "level": 1 })),
            ops: None,
            meta: ItemMeta { idempotency_key: key.into(), client_time_ms: 0 },
        },
        options: None,
    }
}

fn inc_entry(entry_id: &str, id: &str, by: i64, key: &str) -> WireWriteEntry {
    WireWriteEntry {
        entry_id: entry_id.into(),
        action: atoma::core::WriteAction::Patch,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: None,
            value: None,
            ops: Some(vec![PatchOp::inc("gold", by)]),
            meta: ItemMeta { idempotency_key: key.into(), client_time_ms: 0 },
        },
        options: None,
    }
}

/// One item result in brief: entry id, ok, record id, version.
type Brief = (String, bool, Option<String>, Option<u64>);

fn summary(r: &[WriteResult]) -> Vec<Vec<Brief>> {
    r.iter()
        .map(|w| w.results.iter().map(|i| (i.entry_id.clone(), i.ok, i.entity_id.clone(), i.version)).collect())
        .collect()
}

#[test]
fn the_local_executor_replays_a_repeated_request_instead_of_writing_twice() {
    let dir = fresh_dir("replay");
    let exec = LocalExecutor::open(data_file(&dir)).expect("opens");
    let req = WriteRequest {
        resource: "players".into(),
        entries: vec![create_entry("e1", "1", "ann", "k-create-1"), inc_entry("e2", "1", 5, "k-inc-1")],
    };
    let first = exec.write_now(std::slice::from_ref(&req)).expect("writes");
    assert_eq!(
        summary(&first),
        vec![vec![
            ("e1".to_owned(), true, Some("1".to_owned()), Some(1)),
            ("e2".to_owned(), true, Some("1".to_owned()), Some(2)),
        ]]
    );
    let disk = || on_disk(&exec, "players");
    let after_first = disk();
    assert_eq!(after_first.len(), 1);
    assert_eq!((after_first[0].1["gold"].clone(), after_first[0].2), (json!(5), 2));

    // The same request again: the first results, nothing written.
    let again = exec.write_now(std::slice::from_ref(&req)).expect("writes");
    assert_eq!(summary(&again), summary(&first), "replayed");
    assert_eq!(disk(), after_first, "written once");

    // The same keys under new entry ids, even with other contents: replayed under the new ids.
    let changed = WriteRequest {
        resource: "players".into(),
        entries: vec![create_entry("x1", "1", "someone else", "k-create-1"), inc_entry("x2", "1", 100, "k-inc-1")],
    };
    let r = exec.write_now(&[changed]).expect("writes");
    assert_eq!(
        summary(&r),
        vec![vec![
            ("x1".to_owned(), true, Some("1".to_owned()), Some(1)),
            ("x2".to_owned(), true, Some("1".to_owned()), Some(2)),
        ]]
    );
    assert_eq!(disk(), after_first, "still written once");

    // A new key is a new write.
    let r = exec
        .write_now(&[WriteRequest { resource: "players".into(), entries: vec![inc_entry("e3", "1", 1, "k-inc-2")] }])
        .expect("writes");
    assert_eq!(summary(&r), vec![vec![("e3".to_owned(), true, Some("1".to_owned()), Some(3))]]);

    // The replay record is durable: it survives reopening the file.
    drop(exec);
    let exec = LocalExecutor::open(data_file(&dir)).expect("reopens");
    let again = exec.write_now(std::slice::from_ref(&req)).expect("writes");
    assert_eq!(summary(&again), summary(&first), "replayed after a reopen");
    let stored = on_disk(&exec, "players");
    assert_eq!((stored[0].1["gold"].clone(), stored[0].2), (json!(6), 3));

    // A failed entry is not recorded: once the failure is gone, the same key applies.
    let missing = WriteRequest { resource: "players".into(), entries: vec![inc_entry("m", "2", 1, "k-inc-missing")] };
    let r = exec.write_now(std::slice::from_ref(&missing)).expect("writes");
    assert!(!r[0].results[0].ok, "record 2 does not exist yet");
    exec.write_now(&[WriteRequest {
        resource: "players".into(),
        entries: vec![create_entry("c", "2", "bob", "k-c2")],
    }])
    .expect("writes");
    let r = exec.write_now(std::slice::from_ref(&missing)).expect("writes");
    assert!(r[0].results[0].ok && r[0].results[0].version == Some(2), "{r:?}");

    // Keys are per resource: the same key in another resource is its own write.
    let r = exec
        .write_now(&[WriteRequest {
            resource: "items".into(),
            entries: vec![create_entry("i", "1", "sword", "k-create-1")],
        }])
        .expect("writes");
    assert!(r[0].results[0].ok);
    assert_eq!(on_disk(&exec, "items").len(), 1);
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writes_made_in_the_frame_the_app_exits_are_persisted() {
    for round in 0..20u32 {
        let dir = fresh_dir(&format!("exit-{round}"));
        let mut a = local_app::<Player>(&dir);
        a.world_mut()
            .run_system_cached(|mut w: Writer<Player>| {
                for i in 1..=20 {
                    w.create(player(i, "x", 1));
                }
            })
            .expect("runs");
        a.world_mut().write_message(bevy_app::AppExit::Success);
        a.update();
        drop(a);
        let exec = LocalExecutor::open(data_file(&dir)).expect("opens once the app is gone");
        assert_eq!(on_disk(&exec, "players").len(), 20, "round {round}: the last frame's writes landed");
        drop(exec);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_local_executor_forgets_idempotency_keys_after_its_replay_window() {
    let dir = fresh_dir("replay-window");
    let file = data_file(&dir);
    let seed = WriteRequest { resource: "players".into(), entries: vec![create_entry("c", "1", "ann", "k-c")] };
    let inc = WriteRequest { resource: "players".into(), entries: vec![inc_entry("i", "1", 1, "k-inc")] };
    let gold = |exec: &LocalExecutor| on_disk(exec, "players")[0].1["gold"].clone();

    // Inside the window (the default, 7 days) a repeated key replays, even after a reopen.
    let exec = LocalExecutor::open(&file).expect("opens");
    exec.write_now(&[seed, inc.clone()]).expect("writes");
    exec.write_now(std::slice::from_ref(&inc)).expect("writes");
    drop(exec);
    let exec = LocalExecutor::open(&file).expect("reopens");
    exec.write_now(std::slice::from_ref(&inc)).expect("writes");
    assert_eq!(gold(&exec), json!(1), "replayed, not applied again");
    drop(exec);

    // Past the window the key is forgotten (by the next write): the same key is a new write.
    let exec = LocalExecutor::open(&file).expect("reopens").replay_window(std::time::Duration::ZERO);
    let r = exec.write_now(std::slice::from_ref(&inc)).expect("writes");
    assert_eq!(r[0].results[0].version, Some(3), "applied again: {r:?}");
    assert_eq!(gold(&exec), json!(2));
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}
