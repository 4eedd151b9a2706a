//! `orders-producer` and `orders-consumer` on each broker: three consumer
//! processes share the orders (a share of them published twice), one is
//! killed with SIGKILL mid-batch and started again, and the effects table
//! ends with exactly one row per order. The same run with `--no-dedup`
//! shows the duplicates a plain consumer lets through.

#[path = "../../idempotent-consumer/tests/support/nats_server.rs"]
mod nats_server;
#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{PgSchema, binary};

const ORDERS: u64 = 300;

/// One `orders-consumer` process, killed when dropped.
struct ConsumerProcess(Child);

impl ConsumerProcess {
    /// Starts one and returns once it has joined the group (its banner).
    fn start(args: &[String]) -> Self {
        let mut child = Command::new(binary("orders-consumer"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orders-consumer");
        let mut banner = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        stdout.read_line(&mut banner).expect("read the banner");
        assert!(
            banner.starts_with("orders-consumer "),
            "unexpected banner: {banner:?}"
        );
        // The tally line comes at the end; a thread keeps the pipe drained.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                println!("{line}");
            }
        });
        Self(child)
    }

    /// Waits for it to exit on its own (idle), at most `within`.
    fn wait(mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll orders-consumer") {
                assert!(status.success(), "orders-consumer failed: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "orders-consumer did not go idle within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rows in the effects table, and distinct orders among them.
async fn effects(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT order_id) FROM order_effects")
        .fetch_one(pool)
        .await
        .unwrap_or((0, 0))
}

/// Runs the producer and three consumers on `broker`, SIGKILLs one consumer
/// mid-batch and starts it again; the effects table's rows and distinct
/// orders once every consumer went idle.
async fn orders_with_a_sigkill(broker: &str, name: &str, dedup: bool) -> (i64, i64) {
    let schema = PgSchema::create(name).await;
    let url = schema.url();
    let subject = format!("{name}-{}", std::process::id());
    // With deduplication, the store is the effects' database: each effect
    // commits with its record. Without, a plain consumer writes its effect
    // and then acknowledges.
    let store = if dedup {
        url.clone()
    } else {
        "memory".to_owned()
    };
    let mut args: Vec<String> = [
        "--broker",
        broker,
        "--subject",
        &subject,
        "--store",
        &store,
        "--effects",
        &url,
        // Long enough that the SIGKILL lands while the killed consumer has
        // effects written and not yet acknowledged (8 at once), and that
        // the batch (about 2.5 s) is far from done when it does.
        "--work-ms",
        "200",
        "--exit-when-idle",
        "4",
        "--redelivery-ms",
        "1500",
    ]
    .map(str::to_owned)
    .to_vec();
    if !dedup {
        args.push("--no-dedup".to_owned());
    }
    let mut consumers: Vec<ConsumerProcess> =
        (0..3).map(|_| ConsumerProcess::start(&args)).collect();
    let producer = Command::new(binary("orders-producer"))
        .args(["--broker", broker, "--subject", &subject, "--prefix", name])
        .args(["--count", &ORDERS.to_string(), "--duplicates", "0.1"])
        .output()
        .expect("run orders-producer");
    assert!(
        producer.status.success(),
        "{}",
        String::from_utf8_lossy(&producer.stderr)
    );
    println!("{}", String::from_utf8_lossy(&producer.stdout));

    // Mid-batch: a third of the orders have their effect.
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to the effects database");
    let deadline = Instant::now() + Duration::from_secs(30);
    while effects(&pool).await.0 < (ORDERS / 3) as i64 {
        assert!(Instant::now() < deadline, "the consumers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(consumers.remove(0)); // SIGKILL
    let at_kill = effects(&pool).await.1;
    assert!(
        at_kill < ORDERS as i64 * 2 / 3,
        "the SIGKILL came too late to test anything: {at_kill} orders had their effect"
    );
    consumers.push(ConsumerProcess::start(&args));
    for consumer in consumers {
        consumer.wait(Duration::from_secs(60));
    }
    effects(&pool).await
}

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Deletes the queues a RabbitMQ run made (`<subject>` and its dead letters).
async fn delete_queues(name: &str) {
    use lapin::options::QueueDeleteOptions;
    let subject = format!("{name}-{}", std::process::id());
    let connection = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672: scripts/test starts it");
    let channel = connection.create_channel().await.expect("a channel");
    for queue in [subject.clone(), format!("{subject}.dead")] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Exactly one row per order with deduplication; more without.
async fn exactly_once_on(broker: &str, name: &str) {
    let (rows, orders) = orders_with_a_sigkill(broker, name, true).await;
    assert_eq!(
        (rows, orders),
        (ORDERS as i64, ORDERS as i64),
        "one effect per order"
    );
    let (rows, orders) = orders_with_a_sigkill(broker, &format!("{name}_plain"), false).await;
    assert_eq!(orders, ORDERS as i64);
    assert!(
        rows > ORDERS as i64,
        "without deduplication the SIGKILL (and the copies) ran effects twice: {rows} rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_one_effect_per_order_across_a_sigkill() {
    let server = nats_server::NatsServer::start();
    exactly_once_on(&server.url(), "orders_nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_one_effect_per_order_across_a_sigkill() {
    exactly_once_on(AMQP, "orders_amqp").await;
    delete_queues("orders_amqp").await;
    delete_queues("orders_amqp_plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_one_effect_per_order_across_a_sigkill() {
    let server = redis_server::RedisServer::start();
    exactly_once_on(&server.url(), "orders_redis").await;
}
