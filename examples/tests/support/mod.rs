//! What the examples' tests share: the example binaries, a server process,
//! and an HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// reqwest is built with rustls and no crypto provider of its own in this
/// workspace (see idempotent-client): install aws-lc-rs's first.
pub fn http_client() -> reqwest::Client {
    // aws-lc-rs, as `idempotent_client::default_http_client` installs it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
        Self::with_args(&["--addr", "127.0.0.1:0", "--store", store, "--work-ms", "20"])
    }

    /// Starts `payments-server` with these arguments; returns once it listens.
    pub fn with_args(args: &[&str]) -> Self {
        let mut child = Command::new(binary("payments-server"))
            .args(args)
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

impl ServerProcess {
    /// SIGKILL, and reap the process.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL payments-server");
        self.child.wait().expect("reap payments-server");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL the tests use: `IDEMPOTENT_TEST_POSTGRES`, or the local
/// server with trust auth.
pub fn postgres_url() -> String {
    std::env::var("IDEMPOTENT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn postgres_admin(sql: &str) {
    use sqlx::{Connection as _, Executor as _};
    let url = postgres_url();
    let mut connection = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL at {url} is needed for this test ({e}); scripts/test checks it is running"
        )
    });
    connection.execute(sql).await.unwrap();
}

/// A schema of one test's own, dropped (with everything in it) on drop.
pub struct PgSchema(String);

impl PgSchema {
    /// Creates `idem_<name>_<pid>`, empty.
    pub async fn create(name: &str) -> Self {
        let schema = format!("idem_{name}_{}", std::process::id());
        postgres_admin(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await;
        Self(schema)
    }

    /// A `--store` URL whose tables live in this schema.
    pub fn url(&self) -> String {
        format!("{}?options[search_path]={}", postgres_url(), self.0)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0);
        // A runtime of its own, on a thread of its own: this may run in one.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(postgres_admin(&sql));
        })
        .join();
    }
}
