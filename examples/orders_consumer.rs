//! `cargo run --example orders-consumer -- --broker nats://...|amqp://...|redis://...
//! [--subject NAME] [--store memory|redis://...|postgres://...] [--effects postgres://...]
//! [--work-ms N] [--no-dedup] [--exit-when-idle S]`
//!
//! Consumes orders and, for each, writes one row to the effects table
//! (`order_effects`, no unique constraint: a duplicate effect is a second
//! row) and then works `--work-ms` more before the message is settled: the
//! window in which a crash leaves an effect without its acknowledgement.
//! Several may run at once; they share the work as one consumer group.
//!
//! With `--store` the same PostgreSQL as `--effects`, each effect commits
//! in one transaction with its idempotency record, so a SIGKILL anywhere
//! leaves either both or neither: the table ends with one row per order.
//! With another store, the effect and the record are two writes, and a
//! crash between them runs the effect again once the lease runs out.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use examples::orders::{Broker, Order, create_effects_table, record_effect};
use futures_util::{Stream, StreamExt as _};
use idempotent_consumer::{BrokerError, Consumed, Consumer, Delivery, Message, amqp, nats, redis};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::postgres::PostgresStore;
use idempotent_core::redis::RedisStore;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Consumes orders from a stream, queue or Redis stream, once per order,
/// writing one row per executed effect to `order_effects`.
#[derive(clap::Parser)]
#[command(name = "orders-consumer", version)]
struct Args {
    /// The broker: `nats://HOST:PORT` (JetStream), `amqp://USER:PASS@HOST:PORT` (RabbitMQ) or `redis://HOST:PORT` (Redis Streams).
    #[arg(long, value_parser = Broker::parse)]
    broker: Broker,
    /// The stream, queue or Redis stream.
    #[arg(long, value_name = "NAME", default_value = "orders")]
    subject: String,
    /// Where idempotency records live: `memory` (this process only), `redis://HOST:PORT` or `postgres://...`.
    #[arg(long, default_value = "memory", value_parser = store_url)]
    store: String,
    /// The PostgreSQL of the effects table (`order_effects`, created if missing).
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    effects: String,
    /// Work after the effect, before the message is settled, in milliseconds.
    #[arg(long = "work-ms", value_name = "N", default_value_t = 5)]
    work_ms: u64,
    /// Run every delivery, as a plain consumer does (to show the duplicates).
    #[arg(long = "no-dedup")]
    no_dedup: bool,
    /// Exit after S seconds without a message.
    #[arg(long = "exit-when-idle", value_name = "S")]
    exit_when_idle: Option<f64>,
    /// Messages handled at once.
    #[arg(long, value_name = "C", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// This consumer's name in the effects table; `consumer-<pid>` by default.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How soon a message left unsettled by a crashed consumer comes back, in
    /// milliseconds (JetStream's ack wait, Redis Streams' claim idle time;
    /// RabbitMQ requeues it as soon as the connection drops).
    #[arg(long = "redelivery-ms", value_name = "N", default_value_t = 5000)]
    redelivery_ms: u64,
}

fn store_url(text: &str) -> Result<String, String> {
    if text == "memory" || text.starts_with("redis://") || text.starts_with("postgres://") {
        Ok(text.to_owned())
    } else {
        Err("expected `memory`, `redis://HOST:PORT` or `postgres://...`".to_owned())
    }
}

/// The consumer group every `orders-consumer` joins, and the operation of
/// its keys.
const GROUP: &str = "orders-consumer";

/// When the last delivery arrived, and how many are being handled.
struct Activity {
    started: Instant,
    /// Milliseconds from `started` to the last delivery.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Resolves once nothing arrived for `idle` and nothing is in flight.
    async fn idle_for(&self, idle: Duration) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let quiet = Duration::from_millis(self.now() - self.last.load(Ordering::Acquire));
            if quiet >= idle && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }
}

struct Run {
    consumer: Consumer,
    effects: PgPool,
    /// The store, when it is the effects' database: the same-transaction mode.
    transaction: Option<PostgresStore>,
    name: Arc<str>,
    work: Duration,
    idle: Option<Duration>,
    activity: Arc<Activity>,
}

impl Run {
    /// Consumes `deliveries` until idle (or forever), returning the tally.
    async fn consume<S, D>(&self, deliveries: S) -> Consumed
    where
        S: Stream<Item = Result<D, BrokerError>>,
        D: Delivery,
    {
        let activity = &self.activity;
        let deliveries = deliveries.inspect(|_| {
            activity.last.store(activity.now(), Ordering::Release);
        });
        let idle = async {
            match self.idle {
                Some(idle) => activity.idle_for(idle).await,
                None => std::future::pending().await,
            }
        };
        let deliveries = deliveries.take_until(Box::pin(idle));
        let work = self.work;
        match &self.transaction {
            Some(store) => {
                self.consumer
                    .consume_in_transaction(deliveries, store, |message, tx| {
                        // The transaction's body borrows nothing but `tx`.
                        let (activity, name) = (Arc::clone(activity), Arc::clone(&self.name));
                        Box::pin(async move {
                            let _busy = Busy::new(&activity);
                            let order = order_of(&message)?;
                            record_effect(tx, &order.id, &name)
                                .await
                                .map_err(|e| e.to_string())?;
                            tokio::time::sleep(work).await;
                            Ok::<_, String>(())
                        })
                    })
                    .await
            }
            None => {
                self.consumer
                    .consume(deliveries, |message| async move {
                        let _busy = Busy::new(activity);
                        let order = order_of(&message)?;
                        let mut connection =
                            self.effects.acquire().await.map_err(|e| e.to_string())?;
                        record_effect(&mut connection, &order.id, &self.name)
                            .await
                            .map_err(|e| e.to_string())?;
                        tokio::time::sleep(work).await;
                        Ok::<_, String>(())
                    })
                    .await
            }
        }
    }
}

/// Counts a handler in flight while it lives.
struct Busy<'a>(&'a Activity);

impl<'a> Busy<'a> {
    fn new(activity: &'a Activity) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn order_of(message: &Message) -> Result<Order, String> {
    serde_json::from_slice(&message.payload).map_err(|e| format!("not an order: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings and errors on stderr: the store or the broker unreachable, a
    // message dead-lettered.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::WARN)
        .init();
    let args = <Args as clap::Parser>::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orders-consumer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let effects = PgPoolOptions::new()
        .max_connections(u32::from(args.concurrency) + 2)
        .connect(&args.effects)
        .await?;
    create_effects_table(&effects).await?;
    let mut transaction = None;
    let runtime = match args.store.as_str() {
        "memory" => Idempotency::new(MemoryStore::new()),
        url if url.starts_with("redis://") => Idempotency::new(RedisStore::connect(url).await?),
        url => {
            let store = PostgresStore::connect(url).await?;
            store.migrate().await?;
            if url == args.effects {
                transaction = Some(store.clone());
            }
            Idempotency::new(store)
        }
    };
    let consumer = Consumer::builder(runtime, GROUP)
        .deduplicate(!args.no_dedup)
        .concurrency(usize::from(args.concurrency))
        .lease(Duration::from_secs(10))
        .wait(Duration::from_secs(2))
        .retry_delay(Duration::from_millis(200), Duration::from_secs(5))
        .build();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("consumer-{}", std::process::id()))
        .into();
    let run = Run {
        consumer,
        effects,
        transaction,
        name,
        work: Duration::from_millis(args.work_ms),
        idle: args.exit_when_idle.map(Duration::from_secs_f64),
        activity: Arc::new(Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }),
    };
    let redelivery = Duration::from_millis(args.redelivery_ms);
    let mode = match (&run.transaction, args.no_dedup) {
        (_, true) => "deduplication off",
        (Some(_), false) => "effect and record in one transaction",
        (None, false) => "deduplicated",
    };
    println!(
        "orders-consumer {} on {} {} ({mode})",
        run.name, args.broker, args.subject
    );
    let tally = match &args.broker {
        Broker::Nats(url) => {
            let subscriber = nats::Subscriber::builder(url, &args.subject, GROUP)
                .ack_wait(redelivery)
                .connect()
                .await?;
            run.consume(subscriber.deliveries()).await
        }
        Broker::Amqp(url) => {
            let subscriber = amqp::Subscriber::connect(url, &args.subject, GROUP).await?;
            run.consume(subscriber.deliveries()).await
        }
        Broker::Redis(url) => {
            let subscriber = redis::Subscriber::builder(url, &args.subject, GROUP)
                .claim_idle(redelivery)
                .connect()
                .await?;
            run.consume(subscriber.deliveries()).await
        }
    };
    println!(
        "orders-consumer {}: ran {}, replayed {}, retried {}, dead-lettered {}, unsettled {}",
        run.name, tally.ran, tally.replayed, tally.retried, tally.dead_lettered, tally.failed
    );
    Ok(())
}
