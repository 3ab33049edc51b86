//! Local-first writes: what they store and what they queue (no server: the lanes are not
//! started).

use serde_json::json;

use super::*;
use crate::core::PatchOp;
use crate::protocol::{ItemMeta, WriteItem, WriteOptions};

fn entry(action: WriteAction, id: &str, key: &str, value: Option<Json>) -> WireWriteEntry {
    WireWriteEntry {
        entry_id: key.into(),
        action,
        item: WriteItem {
            entity_id: Some(id.into()),
            base_version: None,
            value,
            ops: None,
            meta: ItemMeta { idempotency_key: key.into(), client_time_ms: 1 },
        },
        options: None,
    }
}

#[test]
fn each_write_stores_its_record_and_queues_what_the_server_needs() {
    let dir = std::env::temp_dir().join(format!("atoma-local-first-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("atoma.redb");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let results = {
        let local = LocalExecutor::open(&path).expect("the data file opens");
        let (tx, _rx) = crossbeam_channel::unbounded();
        let engine = SyncEngine::new(local, SyncConfig::new("http://127.0.0.1:9").mode(SyncMode::PushOnly), tx)
            .expect("an engine");
        engine.add_resource("players");
        let mut merge = entry(WriteAction::Update, "a", "k2", Some(json!({"gold": 5})));
        merge.options = Some(WriteOptions { merge: Some(true), ..Default::default() });
        let mut patch = entry(WriteAction::Patch, "b", "k4", None);
        patch.item.ops = Some(vec![PatchOp::inc("level", 2)]);
        let req = WriteRequest {
            resource: "players".into(),
            entries: vec![
                entry(WriteAction::Create, "a", "k1", Some(json!({"name": "Ann", "level": 1}))),
                merge,
                entry(WriteAction::Upsert, "b", "k3", Some(json!({"name": "Bo", "level": 3, "version": 9}))),
                patch,
                entry(WriteAction::Upsert, "c", "k5", Some(json!(7))),
            ],
        };
        rt.block_on(engine.write_many(vec![req]))
    };
    let result = results.into_iter().next().expect("one result").expect("the transaction commits");
    let values: Vec<_> = result.results.iter().map(|r| r.data.clone()).collect();
    assert_eq!(
        values,
        [
            Some(json!({"id": "a", "name": "Ann", "level": 1, "version": 0})),
            Some(json!({"id": "a", "name": "Ann", "level": 1, "gold": 5, "version": 0})),
            Some(json!({"id": "b", "name": "Bo", "level": 3, "version": 0})),
            Some(json!({"id": "b", "name": "Bo", "level": 5, "version": 0})),
            None,
        ],
        "each write applied over the one before; the bad upsert is an error"
    );
    assert!(result.results[4].error.is_some(), "a non-object value is refused");
    // The engine's writer thread lets the file go shortly after the engine is dropped.
    let started = std::time::Instant::now();
    let db = loop {
        match Database::open(&path) {
            Ok(db) => break db,
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the file reopens: {e}"),
        }
    };
    let queued: Vec<(String, WriteAction, Option<Json>)> = outbox::items(&db)
        .expect("the outbox reads")
        .into_iter()
        .map(|i| (i.entity_id, i.entry.action, i.entry.item.value))
        .collect();
    assert_eq!(
        queued,
        [
            ("a".to_owned(), WriteAction::Create, Some(json!({"id": "a", "name": "Ann", "level": 1}))),
            ("a".to_owned(), WriteAction::Update, Some(json!({"gold": 5}))),
            ("b".to_owned(), WriteAction::Upsert, Some(json!({"id": "b", "name": "Bo", "level": 3}))),
            ("b".to_owned(), WriteAction::Patch, None),
        ],
        "a create or full-value write queues the stored record, a merge only its fields"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
