//! `cargo run --example orders-producer -- --broker nats://...|amqp://...|redis://...
//! [--subject NAME] [--count N] [--duplicates F] [--prefix P]`
//!
//! Publishes N orders `<P>-<i>`, and a copy of a share F of them with the
//! same id and payload a little later (what a producer that retries a
//! publish sends). Each carries its order id as its message id, so the
//! broker drops the copies where it can tell (JetStream's deduplication
//! window, the Redis publisher's), and the consumers drop the rest.

use std::future::Future;
use std::process::ExitCode;

use bytes::Bytes;
use examples::orders::{Broker, Order, orders};
use idempotent_consumer::{BrokerError, amqp, nats, redis};

/// Publishes N orders, a share of them twice, with their ids as message ids.
#[derive(clap::Parser)]
#[command(name = "orders-producer", version)]
struct Args {
    /// The broker: `nats://HOST:PORT` (JetStream), `amqp://USER:PASS@HOST:PORT` (RabbitMQ) or `redis://HOST:PORT` (Redis Streams).
    #[arg(long, value_parser = Broker::parse)]
    broker: Broker,
    /// The stream, queue or Redis stream.
    #[arg(long, value_name = "NAME", default_value = "orders")]
    subject: String,
    /// How many orders.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    count: u64,
    /// The share of orders published a second time, with the same id and payload.
    #[arg(long, value_name = "F", default_value_t = 0.1, value_parser = share)]
    duplicates: f64,
    /// Order ids are `<P>-<i>`.
    #[arg(long, value_name = "P", default_value = "order")]
    prefix: String,
    /// Seeds which orders are published twice.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("a share from 0 to 1, such as 0.1".to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orders-producer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), BrokerError> {
    let orders = orders(&args.prefix, args.count, args.duplicates, args.seed);
    let url = args.broker.to_string();
    let recognized = match &args.broker {
        Broker::Nats(_) => {
            let publisher = nats::Publisher::connect(url, &args.subject).await?;
            let publisher = &publisher;
            publish(&orders, |id, payload| async move {
                Ok(publisher.publish(&id, payload).await?.duplicate)
            })
            .await?
        }
        Broker::Amqp(_) => {
            let publisher = amqp::Publisher::connect(url, &args.subject).await?;
            let publisher = &publisher;
            publish(&orders, |id, payload| async move {
                Ok(publisher.publish(&id, payload).await?.duplicate)
            })
            .await?
        }
        Broker::Redis(_) => {
            let publisher = redis::Publisher::connect(url, &args.subject).await?;
            let publisher = &publisher;
            publish(&orders, |id, payload| async move {
                Ok(publisher.publish(&id, payload).await?.duplicate)
            })
            .await?
        }
    };
    println!(
        "orders-producer: published {} orders and {} copies to {} on {}; the broker dropped {recognized} copies",
        args.count,
        orders.len() as u64 - args.count,
        args.subject,
        args.broker
    );
    Ok(())
}

/// Publishes every order in turn with `publish(id, payload)`, which says
/// whether the broker recognized a copy; how many it recognized.
async fn publish<F, Fut>(orders: &[Order], publish: F) -> Result<u64, BrokerError>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: Future<Output = Result<bool, BrokerError>>,
{
    let mut recognized = 0;
    for order in orders {
        let payload = serde_json::to_vec(order).expect("an order serializes");
        recognized += u64::from(publish(order.id.clone(), Bytes::from(payload)).await?);
    }
    Ok(recognized)
}
