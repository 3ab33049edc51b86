//! `atoma-server --data <dir> --bind 127.0.0.1:8787 --config atoma-server.toml`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use atoma_server::{Server, ServerConfig};

const USAGE: &str = "\
usage: atoma-server --data <dir> [--bind <addr:port>] [--config <file.toml>]

  --data <dir>      folder of the data file (atoma-server.redb); created if missing
                    (or `data_dir` in the config file)
  --bind <addr>     address to listen on (default: `bind` in the config, else 127.0.0.1:8787)
  --config <file>   TOML config: limits, tokens, resources (see the atoma-server README)
  --help            this text
  --version         the version";

#[derive(Debug, Default)]
struct Args {
    data: Option<PathBuf>,
    bind: Option<SocketAddr>,
    config: Option<PathBuf>,
}

enum Parsed {
    Run(Args),
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--data" => out.data = Some(PathBuf::from(value("--data")?)),
            "--config" => out.config = Some(PathBuf::from(value("--config")?)),
            "--bind" => {
                let v = value("--bind")?;
                out.bind = Some(v.parse().map_err(|e| format!("--bind {v:?}: {e} (expected e.g. 127.0.0.1:8787)"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Parsed::Run(out))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("atoma-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("atoma-server: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = match &args.config {
        Some(path) => match ServerConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("atoma-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => ServerConfig::default(),
    };
    if let Some(d) = args.data {
        config.data_dir = Some(d);
    }
    if let Some(b) = args.bind {
        config.bind = b;
    }
    if config.data_dir.is_none() {
        eprintln!("atoma-server: --data <dir> is required (or `data_dir` in the config file)\n\n{USAGE}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("atoma-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let data = config.data_file().map(|p| p.display().to_string()).unwrap_or_default();
        let auth = if config.auth_enabled() { "on" } else { "off (no tokens configured)" };
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("atoma-server: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("atoma-server listening on http://{} (data: {data}, auth: {auth})", server.addr);
        shutdown_signal().await;
        eprintln!("atoma-server: shutting down");
        match server.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("atoma-server: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        let Ok(Parsed::Run(a)) = parse(&["--data", "d", "--bind=127.0.0.1:9000", "--config", "c.toml"]) else {
            panic!("valid args")
        };
        assert_eq!(a.data, Some(PathBuf::from("d")));
        assert_eq!(a.bind, Some("127.0.0.1:9000".parse().expect("addr")));
        assert_eq!(a.config, Some(PathBuf::from("c.toml")));
        assert!(parse(&["--bind", "nowhere"]).is_err_and(|e| e.contains("nowhere")));
        assert!(parse(&["--data"]).is_err_and(|e| e.contains("needs a value")));
        assert!(parse(&["--frob"]).is_err_and(|e| e.contains("--frob")));
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
    }
}
