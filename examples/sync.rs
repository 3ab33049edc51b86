//! Sync between two clients through a local atoma-server.
//!
//! Starts an atoma-server on 127.0.0.1 (a redb file under `data/sync-example/server`), and two
//! headless Bevy apps ("alice" and "bob"), each with its own local data file and the `sync`
//! route. Alice writes; the change reaches Bob through the server (push, notify, pull). Then
//! the server goes away: Alice keeps writing (local-first, into her outbox), and when the
//! server is back her writes are pushed and reach Bob.
//!
//! Run: `cargo run --example sync`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atoma::io::SyncConfig;
use atoma::prelude::*;
use atoma::runtime::{SyncControl, SyncStatus};
use atoma_server::{RunningServer, Server, ServerConfig};
use bevy_app::App;
use bevy_ecs::system::RunSystemOnce;
use serde::{Deserialize, Serialize};

#[derive(Record, Clone, Debug, Serialize, Deserialize)]
#[record(store = "notes")]
struct Note {
    id: String,
    text: String,
    #[serde(default)]
    likes: i64,
}

fn client(name: &str, url: &str) -> App {
    let dir = format!("data/sync-example/{name}");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = SyncConfig::new(url);
    config.retry.max = Duration::from_millis(300);
    config.reconnect.max = Duration::from_millis(300);
    let mut app = App::new();
    app.add_plugins(AtomaPlugin::default().data_dir(dir).sync(config).default_route("sync"))
        .add_store::<Note>(StoreConfig::default());
    app.finish();
    app.cleanup();
    app
}

fn start_server(rt: &tokio::runtime::Runtime, bind: SocketAddr) -> Result<RunningServer, Box<dyn std::error::Error>> {
    let config = ServerConfig::new().with_bind(bind).with_data_dir("data/sync-example/server");
    Ok(rt.block_on(Server::start(config))?)
}

/// Runs both apps' frames until `done`, or gives up after 10 s.
fn run_until(
    alice: &mut App,
    bob: &mut App,
    what: &str,
    mut done: impl FnMut(&App, &App) -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        alice.update();
        bob.update();
        if done(alice, bob) {
            println!("  ({what}: {} ms)", start.elapsed().as_millis());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!("timed out waiting for: {what}"))
}

fn note(app: &App, id: &str) -> Option<Note> {
    app.world().resource::<Store<Note>>().get(&id.to_string()).cloned()
}

fn status(app: &App) -> SyncStatus {
    app.world().resource::<SyncStatus>().clone()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all("data/sync-example/server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let server = start_server(&rt, "127.0.0.1:0".parse()?)?;
    let addr = server.addr;
    let url = format!("http://{addr}");
    println!("atoma-server listening on {url}");

    let mut alice = client("alice", &url);
    let mut bob = client("bob", &url);

    println!("alice writes a note");
    alice
        .world_mut()
        .run_system_once(|mut w: Writer<Note>| {
            w.create(Note { id: "n1".into(), text: "meet at the tavern".into(), likes: 0 });
        })
        .map_err(|e| e.to_string())?;
    run_until(&mut alice, &mut bob, "bob sees it", |_, b| note(b, "n1").is_some())?;
    println!("bob sees: {:?}", note(&bob, "n1").map(|n| n.text));

    println!("both like it at once (a commutative counter: no conflict)");
    alice
        .world_mut()
        .run_system_once(|mut w: Writer<Note>| {
            w.inc("n1".into(), "likes", 1);
        })
        .map_err(|e| e.to_string())?;
    bob.world_mut()
        .run_system_once(|mut w: Writer<Note>| {
            w.inc("n1".into(), "likes", 1);
        })
        .map_err(|e| e.to_string())?;
    run_until(&mut alice, &mut bob, "both see 2 likes", |a, b| {
        note(a, "n1").is_some_and(|n| n.likes == 2) && note(b, "n1").is_some_and(|n| n.likes == 2)
    })
    .map_err(|e| e.to_string())?;

    println!("the server goes away");
    rt.block_on(server.shutdown())?;
    alice
        .world_mut()
        .run_system_once(|mut w: Writer<Note>| {
            w.update("n1".into(), |n| n.text = "meet at the tavern, 8 pm".into());
            w.create(Note { id: "n2".into(), text: "bring the map".into(), likes: 0 });
        })
        .map_err(|e| e.to_string())?;
    for _ in 0..100 {
        alice.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    let s = status(&alice);
    println!(
        "alice, offline: her store has both notes; {} write(s) wait in her outbox; last error: {:?}",
        s.pending + s.in_flight,
        s.last_error
    );

    println!("the server is back");
    let server = start_server(&rt, addr)?;
    run_until(&mut alice, &mut bob, "bob sees alice's offline writes", |_, b| {
        note(b, "n2").is_some() && note(b, "n1").is_some_and(|n| n.text.ends_with("8 pm"))
    })
    .map_err(|e| e.to_string())?;
    println!("bob sees: {:?} / {:?}", note(&bob, "n1").map(|n| n.text), note(&bob, "n2").map(|n| n.text));

    // A loading-screen barrier: every write so far acked and pulled back.
    let id = alice.world_mut().run_system_once(|mut c: SyncControl| c.barrier()).map_err(|e| e.to_string())?;
    run_until(&mut alice, &mut bob, "alice's barrier", |a, _| status(a).reached(id))?;
    println!("done: alice's outbox is empty ({} pending)", status(&alice).pending);
    rt.block_on(server.shutdown())?;
    Ok(())
}
