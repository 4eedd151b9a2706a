//! What the examples' tests share: the example binaries, a server process,
//! and an HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// reqwest is built with rustls and no crypto provider of its own in this
/// workspace (see idempotent-client): install ring first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An example binary (`payments-server`, `pay`), built by `cargo test` next to this
/// test's own executable (examples are built before tests run).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test --workspace --all-features` (it builds the examples) or `cargo build --example {name}`",
        binary.display()
    );
    binary
}

/// A `payments-server` process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ServerProcess {
    /// Starts `payments-server --store STORE --work-ms 20` on a free port.
    pub fn start(store: &str) -> Self {
        let mut child = Command::new(binary("payments-server"))
            .args(["--addr", "127.0.0.1:0", "--store", store, "--work-ms", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start payments-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the banner");
        let addr: SocketAddr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected banner: {line:?}"));
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
