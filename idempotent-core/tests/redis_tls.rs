//! `rediss://`: the conformance suite over TLS, against a real `redis-server`
//! listening only on a TLS port with a certificate from a throwaway CA the
//! test makes with `openssl`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Idempotency, Operation};

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Self {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idempotent-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is needed for the TLS test (apt-get install -y openssl)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=idempotent test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).unwrap()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` with TLS only (`--port 0`), killed when dropped.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(certs: &Certificates, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &certs.path("server.crt")])
            .args(["--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.crt")])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server not found: run ./scripts/test (it installs it with apt-get)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the TLS redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls_with_a_private_ca() {
    let certs = Certificates::make();
    let server = TlsRedis::start(&certs, &certs.dir);
    let store = RedisStore::builder()
        .url(server.url())
        .tls_root_certificates(certs.ca())
        .key_prefix("tls:")
        .build()
        .await
        .unwrap();
    idempotent_core::conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_closed_and_the_body_never_runs() {
    static OP: Operation = Operation::new("tls.untrusted");
    let certs = Certificates::make();
    let server = TlsRedis::start(&certs, &certs.dir);
    // No private CA given: the system roots do not trust the test's CA.
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let idempotency = Idempotency::new(store);
    let mut ran = false;
    let result = idempotency
        .call(&OP)
        .key("k")
        .run(async {
            ran = true;
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(result, Err(Error::StoreUnavailable(_))),
        "{result:?}"
    );
    assert!(!ran);
}
