//! Starting a real atoma-server on 127.0.0.1 inside a test.
#![allow(dead_code, reason = "each test file uses a different part")]

use atoma_server::{RunningServer, Server, ServerConfig};

/// A server on its own tokio runtime (kept alive with it).
pub struct TestServer {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub url: String,
}

impl TestServer {
    /// Starts a server from TOML (bind and data dir are set here).
    pub fn start(toml: &str, data_dir: Option<&std::path::Path>) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut config = ServerConfig::from_toml_str(toml).expect("config");
        config = config.with_bind("127.0.0.1:0".parse().expect("addr"));
        if let Some(d) = data_dir {
            config = config.with_data_dir(d);
        }
        let server = rt.block_on(Server::start(config)).expect("server starts");
        let url = format!("http://{}", server.addr);
        TestServer { rt, server: Some(server), url }
    }

    /// Starts a server on a given address (to come back where it was).
    pub fn start_at(toml: &str, data_dir: &std::path::Path, addr: std::net::SocketAddr) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let config = ServerConfig::from_toml_str(toml).expect("config").with_bind(addr).with_data_dir(data_dir);
        let server = rt.block_on(Server::start(config)).expect("server starts");
        let url = format!("http://{}", server.addr);
        TestServer { rt, server: Some(server), url }
    }

    /// An open server with no auth, in memory.
    pub fn open() -> TestServer {
        Self::start("", None)
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).expect("clean shutdown");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh temp folder, named after the test process. The folders of earlier test processes
/// that are gone are removed on the first call (where `/proc` tells which processes live), so
/// runs do not pile up data files in the temp folder; a live process's folders are left alone.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_dead_runs);
    let d = std::env::temp_dir().join(format!("atoma-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Removes the `atoma-*-{pid}` folders and `atoma-*-{pid}.redb` files (the crate's unit tests
/// make those) whose process no longer runs.
fn sweep_dead_runs() {
    let proc = std::path::Path::new("/proc");
    let (true, Ok(entries)) = (proc.join("self").exists(), std::fs::read_dir(std::env::temp_dir())) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("atoma-")) else { continue };
        let rest = rest.strip_suffix(".redb").unwrap_or(rest);
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        let _ = if entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
    }
}
