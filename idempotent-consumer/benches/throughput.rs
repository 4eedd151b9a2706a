//! Messages a second through a consumer, on each broker, with deduplication
//! on the memory store and on Redis, against the same consumer without it
//! (the baseline), in one run:
//!
//! ```sh
//! cargo bench -p idempotent-consumer --features nats,amqp,redis --bench throughput [-- MESSAGES ROUNDS]
//! ```
//!
//! Each round publishes MESSAGES orders with distinct ids to a subject of
//! its own, then times a consumer (16 deliveries at once, a handler that
//! does nothing) until it has settled them all. The brokers are real: a
//! `nats-server -js` and a `redis-server` this bench starts, and RabbitMQ
//! on 127.0.0.1:5672. The Redis store is a
//! second `redis-server` of its own.

#[path = "../tests/support/nats_server.rs"]
mod nats_server;
#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

/// Every message's payload.
const ORDER: &str = r#"{"amount":4200}"#;

use futures_util::{Stream, StreamExt as _};
use idempotent_consumer::{BrokerError, Consumer, Delivery, amqp, nats, redis};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;

/// What the consumer deduplicates with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No deduplication: the baseline.
    Plain,
    Memory,
    Redis,
    /// The floor: no deduplication in the consumer, and the handler does
    /// by hand what the Redis store must (a `SET NX PX` claim of the
    /// message's key, then a `SET` of its result), through raw redis-rs.
    Floor,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "baseline: without deduplication",
            Self::Memory => "ours, memory store",
            Self::Redis => "ours, Redis store",
            Self::Floor => "floor: SET NX + SET by hand",
        }
    }
}

struct Bench {
    messages: usize,
    store_url: String,
    round: usize,
}

impl Bench {
    async fn consumer(&self, mode: Mode) -> Consumer {
        let runtime = match mode {
            Mode::Plain | Mode::Memory | Mode::Floor => Idempotency::new(MemoryStore::new()),
            Mode::Redis => Idempotency::new(
                RedisStore::connect(&self.store_url)
                    .await
                    .expect("the store"),
            ),
        };
        Consumer::builder(runtime, "bench")
            .deduplicate(matches!(mode, Mode::Memory | Mode::Redis))
            .concurrency(16)
            .build()
    }

    /// Times `consumer` over the first `messages` deliveries; messages a
    /// second. The handler does nothing, but in `Mode::Floor`.
    async fn time<S, D>(&self, consumer: &Consumer, mode: Mode, deliveries: S) -> f64
    where
        S: Stream<Item = Result<D, BrokerError>>,
        D: Delivery,
    {
        let floor = match mode {
            Mode::Floor => Some(
                ::redis::Client::open(self.store_url.as_str())
                    .expect("the store's URL")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("the store"),
            ),
            _ => None,
        };
        let floor = &floor;
        let started = Instant::now();
        let consumed = consumer
            .consume(deliveries.take(self.messages), |message| async move {
                if let Some(connection) = floor {
                    let key = format!(
                        "floor:{}:{}",
                        message.source,
                        message.id.unwrap_or_default()
                    );
                    let mut connection = connection.clone();
                    let claimed: Option<String> = ::redis::cmd("SET")
                        .arg(&key)
                        .arg("claimed")
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| e.to_string())?;
                    if claimed.is_some() {
                        let () = ::redis::cmd("SET")
                            .arg(&key)
                            .arg("done")
                            .arg("PX")
                            .arg(86_400_000)
                            .query_async(&mut connection)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                Ok::<_, String>(())
            })
            .await;
        let took = started.elapsed();
        assert_eq!(
            consumed.ran as usize, self.messages,
            "every message ran once: {consumed:?}"
        );
        self.messages as f64 / took.as_secs_f64()
    }

    fn subject(&self, broker: &str, mode: Mode) -> String {
        format!(
            "bench-{broker}-{}-{}-{}",
            mode as u8,
            self.round,
            std::process::id()
        )
    }

    /// Publishes `messages` orders with distinct ids through `publish(id)`.
    async fn publish<F, Fut>(&self, publish: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        for i in 0..self.messages {
            publish(format!("order-{i}")).await.expect("publish");
        }
    }

    async fn nats(&self, url: &str, mode: Mode) -> f64 {
        let subject = self.subject("nats", mode);
        let subscriber = nats::Subscriber::connect(url, &subject, "bench")
            .await
            .expect("subscribe");
        let publisher = nats::Publisher::connect(url, &subject)
            .await
            .expect("publisher");
        let publisher = &publisher;
        self.publish(|id| async move { publisher.publish(&id, ORDER).await.map(drop) })
            .await;
        self.time(&self.consumer(mode).await, mode, subscriber.deliveries())
            .await
    }

    async fn amqp(&self, url: &str, mode: Mode) -> f64 {
        let queue = self.subject("amqp", mode);
        let subscriber = amqp::Subscriber::connect(url, &queue, "bench")
            .await
            .expect("subscribe");
        let publisher = amqp::Publisher::connect(url, &queue)
            .await
            .expect("publisher");
        let publisher = &publisher;
        self.publish(|id| async move { publisher.publish(&id, ORDER).await.map(drop) })
            .await;
        let rate = self
            .time(&self.consumer(mode).await, mode, subscriber.deliveries())
            .await;
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        for queue in [queue.clone(), format!("{queue}.dead")] {
            let options = lapin::options::QueueDeleteOptions::default();
            let _ = channel.queue_delete(queue.as_str().into(), options).await;
        }
        rate
    }

    async fn redis(&self, url: &str, mode: Mode) -> f64 {
        let stream = self.subject("redis", mode);
        let subscriber = redis::Subscriber::connect(url, &stream, "bench")
            .await
            .expect("subscribe");
        let publisher = redis::Publisher::connect(url, &stream)
            .await
            .expect("publisher");
        let publisher = &publisher;
        self.publish(|id| async move { publisher.publish(&id, ORDER).await.map(drop) })
            .await;
        self.time(&self.consumer(mode).await, mode, subscriber.deliveries())
            .await
    }
}

#[tokio::main]
async fn main() {
    // A delivery that cannot be received or settled says why, on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let messages = args.next().and_then(|n| n.parse().ok()).unwrap_or(5000);
    let rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(2);
    let nats_server = nats_server::NatsServer::start();
    let broker_redis = redis_server::RedisServer::start();
    let store_redis = redis_server::RedisServer::start();
    let amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    println!(
        "{messages} messages a round, {rounds} rounds; messages a second (ratio to the baseline)"
    );
    let modes = [Mode::Plain, Mode::Memory, Mode::Floor, Mode::Redis];
    for broker in ["NATS JetStream", "RabbitMQ", "Redis Streams"] {
        let mut rates = vec![Vec::new(); modes.len()];
        for round in 0..rounds {
            let bench = Bench {
                messages,
                store_url: store_redis.url(),
                round,
            };
            for (i, mode) in modes.into_iter().enumerate() {
                let rate = match broker {
                    "NATS JetStream" => bench.nats(&nats_server.url(), mode).await,
                    "RabbitMQ" => bench.amqp(amqp_url, mode).await,
                    _ => bench.redis(&broker_redis.url(), mode).await,
                };
                rates[i].push(rate);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, mode) in modes.into_iter().enumerate() {
            let cells: Vec<String> = rates[i]
                .iter()
                .zip(&rates[0])
                .map(|(rate, base)| format!("{rate:>9.0} ({:>3.0}%)", 100.0 * rate / base))
                .collect();
            println!("{broker:<15} {:<34} {}", mode.label(), cells.join("  "));
        }
    }
}
