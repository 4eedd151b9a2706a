//! Redis failures: a dead or silent Redis fails closed (the body never runs)
//! within the store's timeout, the store recovers by itself when Redis comes
//! back, and records it cannot decode are errors, never re-executions.
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::record::ClaimOutcome;
use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Fingerprint, Idempotency, Operation, Store};
use support::redis_server::RedisServer;

static OP: Operation = Operation::new("failures.charge");
const TIMEOUT: Duration = Duration::from_millis(300);

async fn idempotency(server: &RedisServer) -> Idempotency {
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(TIMEOUT)
        .build()
        .await
        .expect("a standalone store builds even before connecting");
    Idempotency::new(store)
}

async fn charge(idem: &Idempotency, key: &str, runs: &AtomicUsize) -> Result<u64, Error> {
    idem.call(&OP)
        .key(key)
        .payload(&100)
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(100)
        })
        .await
        .map(|e| e.value)
}

/// Charges `key`, retrying while the store is unavailable, for up to `within`:
/// the store must recover by itself.
async fn charge_once_recovered(
    idem: &Idempotency,
    key: &str,
    runs: &AtomicUsize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        match charge(idem, key, runs).await {
            Ok(value) => {
                assert_eq!(value, 100);
                return;
            }
            Err(error) if error.is_store_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the store did not recover: {error:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_closed_and_the_store_recovers_after_restart() {
    let mut server = RedisServer::start();
    let idem = idempotency(&server).await;
    let runs = AtomicUsize::new(0);
    assert_eq!(charge(&idem, "before", &runs).await.unwrap(), 100);

    server.kill();
    for key in ["during-1", "during-2", "before"] {
        let started = Instant::now();
        let error = charge(&idem, key, &runs).await.unwrap_err();
        assert!(error.is_store_unavailable(), "{error:?}");
        // Bounded: a few timeouts at most, never a hang.
        assert!(
            started.elapsed() < TIMEOUT * 10,
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no body runs without a claim"
    );

    server.restart();
    charge_once_recovered(&idem, "after", &runs, Duration::from_secs(15)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The same key again is a replay, served by the restarted server.
    charge(&idem, "after", &runs).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_fails_closed_within_the_timeout() {
    let server = RedisServer::start();
    let idem = idempotency(&server).await;
    let runs = AtomicUsize::new(0);
    charge(&idem, "warm-up", &runs).await.unwrap();

    // Every client's commands now block for 2 s: connected, but silent.
    assert!(
        server
            .command(&["CLIENT", "PAUSE", "2000", "ALL"])
            .is_some_and(|r| r.contains("OK"))
    );
    let started = Instant::now();
    let error = charge(&idem, "silent", &runs).await.unwrap_err();
    assert!(error.is_store_unavailable(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn undecodable_records_are_errors_not_re_executions() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .build()
        .await
        .unwrap();
    let idem = Idempotency::new(store.clone());
    let runs = AtomicUsize::new(0);
    let redis_key = |key: &str| {
        let key = idempotent_core::record::StorageKey::new(
            idem.namespace(),
            "",
            OP.name(),
            &key.parse().unwrap(),
        );
        store.redis_key(&key)
    };

    // Written by something else: not a record at all.
    server
        .command(&["SET", &redis_key("foreign"), "hello"])
        .unwrap();
    // Truncated: a record tag with too few bytes.
    server
        .command(&["SET", &redis_key("truncated"), "P12"])
        .unwrap();
    // Another type of value under the key.
    server
        .command(&["HSET", &redis_key("hash"), "a", "b"])
        .unwrap();
    // An in-progress record with one byte too many that is not the
    // waiter's mark `w`.
    let bad_mark = format!("P{}x", "0".repeat(32));
    server
        .command(&["SET", &redis_key("bad-mark"), &bad_mark, "PX", "60000"])
        .unwrap();
    for key in ["foreign", "truncated", "hash", "bad-mark"] {
        let error = charge(&idem, key, &runs).await.unwrap_err();
        assert!(matches!(error, Error::Codec { .. }), "{key}: {error:?}");
    }

    // A completed record whose response is not what the function returns.
    charge(&idem, "bad-response", &runs).await.unwrap();
    let raw = server
        .command(&["GET", &redis_key("bad-response")])
        .unwrap();
    assert!(raw.starts_with('$'), "{raw}");
    let string_op = Operation::new("failures.charge");
    let error = idem
        .call(&string_op)
        .key("bad-response")
        .payload(&100)
        .run(async { Ok::<Vec<String>, Error>(vec![]) })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Codec { .. }), "{error:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only the first good call ran"
    );
}

/// An in-progress record without an expiry (written, or `PERSIST`ed, by
/// something else) would hold its key forever: a clear error at once, even
/// for a caller that waits, and the body does not run.
#[tokio::test]
async fn an_in_progress_record_without_expiry_is_an_error_not_a_spin() {
    static WAITING: Operation = Operation::new("failures.charge").wait(Duration::from_secs(2));
    let server = RedisServer::start();
    let idem = idempotency(&server).await;
    let store = RedisStore::builder()
        .url(server.url())
        .build()
        .await
        .unwrap();
    let key = idempotent_core::record::StorageKey::new(
        idem.namespace(),
        "",
        WAITING.name(),
        &"stuck".parse().unwrap(),
    );
    let claimed = store
        .claim(
            &key,
            Fingerprint::try_of(&100).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Acquired(_)), "{claimed:?}");
    assert_eq!(
        server
            .command(&["PERSIST", &store.redis_key(&key)])
            .unwrap()
            .trim(),
        ":1"
    );
    let runs = AtomicUsize::new(0);
    // With the 2 s wait, a spin would end in `InProgress`, not this error.
    let error = idem
        .call(&WAITING)
        .key("stuck")
        .payload(&100)
        .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst)) })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Codec { .. }), "{error:?}");
    assert!(error.to_string().contains("without an expiry"), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Redis killed while calls are running, then restarted: every caller gets
/// its value or a clear error, no body starts while Redis is down, and once
/// it is back every key completes. Each key is retried until it succeeds,
/// as a client would; a key runs twice only if its first run lost its
/// record to the restart (`LeaseLost`: the restarted Redis is empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_in_the_middle_of_a_run_fails_closed_and_recovers() {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    const TASKS: usize = 8;
    const KEYS_PER_TASK: usize = 60;
    let mut server = RedisServer::start();
    let idem = idempotency(&server).await;
    let down = Arc::new(AtomicBool::new(false));
    let started_while_down = Arc::new(AtomicUsize::new(0));
    let runs: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..TASKS * KEYS_PER_TASK)
            .map(|_| AtomicUsize::new(0))
            .collect(),
    );
    let lease_lost = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let slowest_failure = Arc::new(Mutex::new(Duration::ZERO));
    let workers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (idem, down, started_while_down, runs, lease_lost, slowest_failure) = (
                idem.clone(),
                Arc::clone(&down),
                Arc::clone(&started_while_down),
                Arc::clone(&runs),
                Arc::clone(&lease_lost),
                Arc::clone(&slowest_failure),
            );
            tokio::spawn(async move {
                for j in 0..KEYS_PER_TASK {
                    let n = task * KEYS_PER_TASK + j;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let started = Instant::now();
                        let result = idem
                            .call(&OP)
                            .key(&format!("mid-run-{n}"))
                            .payload(&n)
                            .run(async {
                                if down.load(Ordering::SeqCst) {
                                    started_while_down.fetch_add(1, Ordering::SeqCst);
                                }
                                runs[n].fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(15)).await;
                                Ok::<_, Error>(n)
                            })
                            .await;
                        match result {
                            Ok(executed) => {
                                assert_eq!(executed.value, n);
                                break;
                            }
                            Err(Error::LeaseLost { .. }) => {
                                lease_lost.lock().unwrap().insert(n);
                            }
                            Err(error) if error.is_store_unavailable() => {
                                {
                                    let mut slowest = slowest_failure.lock().unwrap();
                                    *slowest = (*slowest).max(started.elapsed());
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(error) => panic!("key {n}: unexpected {error:?}"),
                        }
                        assert!(Instant::now() < deadline, "key {n} never completed");
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    // Answers already in the client's buffers may still start bodies for a
    // moment; after that, nothing may start until Redis is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    down.store(false, Ordering::SeqCst);
    server.restart();
    for worker in workers {
        worker.await.unwrap();
    }

    assert_eq!(
        started_while_down.load(Ordering::SeqCst),
        0,
        "a body started while Redis was down"
    );
    let slowest = *slowest_failure.lock().unwrap();
    assert!(
        slowest > Duration::ZERO,
        "the outage was never seen: the test proves nothing"
    );
    assert!(slowest < TIMEOUT * 10, "a failing call took {slowest:?}");
    let lease_lost = lease_lost.lock().unwrap();
    for (n, runs) in runs.iter().enumerate() {
        let runs = runs.load(Ordering::SeqCst);
        let allowed = if lease_lost.contains(&n) { 2 } else { 1 };
        assert!(
            (1..=allowed).contains(&runs),
            "key {n} ran {runs} times (lease lost: {})",
            lease_lost.contains(&n)
        );
    }
}

/// A cluster that is down when the store is built: the build succeeds, calls
/// fail closed, and once the cluster is back the same store works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_built_while_the_cluster_is_down_recovers_when_it_is_up() {
    let mut cluster = support::redis_server::RedisCluster::start(3);
    for node in &mut cluster.nodes {
        node.kill();
    }
    let store = RedisStore::builder()
        .url(cluster.url())
        .timeout(TIMEOUT)
        .build()
        .await
        .expect("a cluster store builds without reaching the cluster");
    let idem = Idempotency::new(store);
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let error = charge(&idem, "early", &runs).await.unwrap_err();
    assert!(error.is_store_unavailable(), "{error:?}");
    assert!(
        started.elapsed() < TIMEOUT * 10,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no body runs without a claim"
    );

    // Back, with the same ports and cluster configuration (no data).
    for node in &mut cluster.nodes {
        node.restart();
    }
    charge_once_recovered(&idem, "after", &runs, Duration::from_secs(30)).await;
    charge(&idem, "after", &runs).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "then a replay");
}

/// A cluster URL without seed nodes is refused at build, never taken for
/// the default standalone server on localhost.
#[tokio::test]
async fn a_cluster_without_seed_nodes_is_refused() {
    for url in ["redis+cluster://", "redis+cluster://,"] {
        let built = RedisStore::builder().url(url).build().await;
        let error = built.err().unwrap_or_else(|| panic!("{url} was accepted"));
        assert!(error.to_string().contains("seed node"), "{url}: {error}");
    }
    let built = RedisStore::builder()
        .cluster_nodes(Vec::<String>::new())
        .build()
        .await;
    assert!(built.is_err());
}

/// A TCP proxy in front of Redis whose open connections can be made to go
/// silent (nothing forwarded either way, no reset: what a Redis host that
/// vanished, or a failover that moved the address, looks like), while new
/// connections are forwarded normally.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    async fn start(server_port: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let current = Arc::clone(&generation);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = current.load(Ordering::SeqCst);
                let current = Arc::clone(&current);
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, born, Arc::clone(&current));
                    let down = pump(server_read, client_write, born, current);
                    tokio::join!(up, down);
                });
            }
        });
        Self { addr, generation }
    }

    /// Every connection open now goes silent for good.
    fn freeze_open_connections(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

/// A Redis server, a [`FreezingProxy`] in front of it, and a store built
/// from `builder` that reaches the server through the proxy.
async fn behind_a_proxy(
    builder: idempotent_core::redis::RedisStoreBuilder,
) -> (RedisServer, FreezingProxy, Idempotency) {
    let server = RedisServer::start();
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FreezingProxy::start(port).await;
    let store = builder
        .url(proxy.url())
        .timeout(TIMEOUT)
        .build()
        .await
        .unwrap();
    (server, proxy, Idempotency::new(store))
}

/// Copies `from` to `to` until the proxy's generation moves past `born`;
/// then holds both ends open, forwarding nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    born: u64,
    current: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if current.load(Ordering::SeqCst) != born {
            // Silent from now on: keep the sockets, drop the bytes.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A connection that goes silent without a reset (the host vanished, or a
/// failover moved the address) is given up after its calls time out, and
/// the store reconnects by itself, within seconds rather than the minutes
/// TCP would take to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_replaced() {
    let (_server, proxy, idem) = behind_a_proxy(RedisStore::builder()).await;
    let runs = AtomicUsize::new(0);
    charge(&idem, "before", &runs).await.unwrap();

    proxy.freeze_open_connections();
    let error = charge(&idem, "silent", &runs).await.unwrap_err();
    assert!(error.is_store_unavailable(), "{error:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no body ran while silent");
    charge_once_recovered(&idem, "after", &runs, Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// After a silent loss, completion notices come back too: the notifier
/// checks its own connection with a `PING` and subscribes again through a
/// new one, so a waiter is woken by the notice of the call it waits on,
/// not by its re-check an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_notices_come_back_after_a_silent_loss() {
    static WAITED: Operation = Operation::new("failures.waited").wait(Duration::from_secs(20));
    let builder = RedisStore::builder().wait_recheck(Duration::from_secs(3600));
    let (server, proxy, idem) = behind_a_proxy(builder).await;
    let runs = AtomicUsize::new(0);
    let subscribers = || {
        let reply = server
            .command(&["PUBSUB", "NUMSUB", "idempotent:done"])
            .unwrap_or_default();
        reply
            .trim_end()
            .rsplit(':')
            .next()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap_or(0)
    };
    let until = |want: u32, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscribers() < want {
            assert!(Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until(1, "the store never subscribed");
    charge(&idem, "before", &runs).await.unwrap();

    proxy.freeze_open_connections();
    let _ = charge(&idem, "silent", &runs).await;
    charge_once_recovered(&idem, "after", &runs, Duration::from_secs(10)).await;
    // Redis still counts the frozen subscription: a second one is new.
    until(2, "the notifier did not subscribe again");

    let call = |work: Duration, started: Option<tokio::sync::oneshot::Sender<()>>| {
        let idem = idem.clone();
        async move {
            idem.call(&WAITED)
                .key("waited")
                .run(async move {
                    if let Some(started) = started {
                        let _ = started.send(());
                    }
                    tokio::time::sleep(work).await;
                    Ok::<_, Error>(7)
                })
                .await
        }
    };
    let (report, first_started) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(call(Duration::from_millis(500), Some(report)));
    first_started.await.expect("the first call ran its body");
    let started = Instant::now();
    let waited = call(Duration::ZERO, None).await.unwrap();
    assert!(waited.replayed, "the waiter got the first call's value");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by its re-check, not the notice: {:?}",
        started.elapsed()
    );
    assert!(!first.await.unwrap().unwrap().replayed);
}
