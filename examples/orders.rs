//! What `orders-producer` and `orders-consumer` share: the brokers they
//! talk to, the order they pass, and the effects table the consumer writes.

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The table of effects: one row per executed effect, and no unique
/// constraint, so a duplicate effect is a second row.
pub const EFFECTS_TABLE: &str = "order_effects";

/// A broker, by its URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// `nats://HOST:PORT`: NATS JetStream.
    Nats(String),
    /// `amqp://USER:PASS@HOST:PORT/VHOST`: RabbitMQ.
    Amqp(String),
    /// `redis://HOST:PORT`: Redis Streams.
    Redis(String),
}

impl Broker {
    /// Parses `nats://...`, `amqp://...` or `redis://...` (clap's value parser).
    pub fn parse(url: &str) -> Result<Self, String> {
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("nats") => Ok(Self::Nats(url.to_owned())),
            Some("amqp" | "amqps") => Ok(Self::Amqp(url.to_owned())),
            Some("redis" | "rediss") => Ok(Self::Redis(url.to_owned())),
            _ => Err(
                "expected nats://HOST:PORT, amqp://USER:PASS@HOST:PORT or redis://HOST:PORT"
                    .to_owned(),
            ),
        }
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nats(url) | Self::Amqp(url) | Self::Redis(url) => f.write_str(url),
        }
    }
}

/// One order, the payload of a message (its id is the message id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `<prefix>-<i>`.
    pub id: String,
    /// In cents.
    pub amount: u64,
}

/// The orders a producer publishes, in order: `count` orders
/// `<prefix>-<i>`, and a copy of about `duplicates` of them (the same id
/// and payload, as a producer's retry sends) a few places later.
pub fn orders(prefix: &str, count: u64, duplicates: f64, seed: u64) -> Vec<Order> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sequence: Vec<Order> = Vec::with_capacity(count as usize);
    for i in 0..count {
        let order = Order {
            id: format!("{prefix}-{i}"),
            amount: 100 + rng.u64(..10_000),
        };
        sequence.push(order.clone());
        if rng.f64() < duplicates {
            let at = sequence.len().saturating_sub(rng.usize(..8));
            sequence.insert(at, order);
        }
    }
    sequence
}

/// Creates the effects table if it is missing. Several consumers start at
/// once: one that loses the race to create it finds it there.
pub async fn create_effects_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    let created = sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {EFFECTS_TABLE} (order_id text, consumer text, at timestamptz)"
    ))
    .execute(pool)
    .await;
    match created {
        Ok(_) => Ok(()),
        Err(error) => {
            let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(EFFECTS_TABLE)
                .fetch_one(pool)
                .await?;
            if exists.is_some() { Ok(()) } else { Err(error) }
        }
    }
}

/// The effect: one row for `order`, written by `consumer`.
pub async fn record_effect(
    connection: &mut sqlx::PgConnection,
    order: &str,
    consumer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {EFFECTS_TABLE} (order_id, consumer, at) VALUES ($1, $2, now())"
    ))
    .bind(order)
    .bind(consumer)
    .execute(connection)
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_once_and_a_share_twice() {
        let orders = orders("o", 1000, 0.1, 7);
        let mut ids: Vec<_> = orders.iter().map(|o| o.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
        let copies = orders.len() - 1000;
        assert!((60..140).contains(&copies), "{copies} copies");
    }

    #[test]
    fn brokers_by_scheme() {
        assert!(matches!(
            Broker::parse("nats://127.0.0.1:4222"),
            Ok(Broker::Nats(_))
        ));
        assert!(matches!(
            Broker::parse("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Ok(Broker::Amqp(_))
        ));
        assert!(matches!(
            Broker::parse("redis://127.0.0.1:6379"),
            Ok(Broker::Redis(_))
        ));
        assert!(Broker::parse("kafka://x").is_err());
    }
}
