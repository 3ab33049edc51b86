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

/// A fresh temp folder.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("atoma-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
