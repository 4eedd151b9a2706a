//! A real `nats-server -js` on a free loopback port, for the tests. A
//! missing binary fails the test and says how to install it; nothing skips.

#![allow(dead_code, unreachable_pub)]

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const MISSING: &str = "nats-server not found (on PATH or at /usr/sbin/nats-server): run ./scripts/test, \
                       or install it with apt-get install -y nats-server";

/// One `nats-server -js` on a free loopback port, killed when dropped.
pub struct NatsServer {
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl NatsServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("idempotent-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let log = dir.join("server.log");
        let binary = if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok()
        {
            PathBuf::from("nats-server")
        } else {
            PathBuf::from("/usr/sbin/nats-server")
        };
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(MISSING);
        let server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(&log) {
                let _ = file.read_to_string(&mut text);
            }
            if text.contains("Server is ready") {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {port} did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server of the tests running now, started by the first of them.
pub fn server() -> Arc<NatsServer> {
    static SHARED: Mutex<Weak<NatsServer>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(NatsServer::start());
    *shared = Arc::downgrade(&server);
    server
}

impl NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}
