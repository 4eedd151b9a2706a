//! Message consumers whose effect happens once per message.
//!
//! Brokers deliver at least once: a producer that retries publishes twice,
//! and a consumer that crashes after its effect and before its
//! acknowledgement gets the message again. A [`Consumer`] runs its handler
//! through the idempotent engine: the key comes from the message (its
//! producer's id, a header, or a function of the payload: [`KeySource`]),
//! scoped by its stream or queue; the payload is the fingerprint; and the
//! message is acknowledged only once the handler's result is recorded. A
//! duplicate is acknowledged without running; a handler that fails is
//! redelivered, then dead-lettered; a key reused with another payload is a
//! poison message, dead-lettered and never run.
//!
//! "Exactly once" is about the effect, not the delivery: a message may be
//! delivered several times, its handler's effect happens once. One window
//! is left where the effect is outside the store (an HTTP call, a write to
//! another database): a crash after the effect and before its result is
//! recorded runs it again once the lease runs out. Close it with PostgreSQL's
#![cfg_attr(
    feature = "postgres",
    doc = "same-transaction mode ([`Consumer::handle_in_transaction`], feature"
)]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "same-transaction mode (`Consumer::handle_in_transaction`, feature"
)]
//! `postgres`), where the effect and the record commit together, or with
//! journaled steps ([`idempotent_core::Steps`]).
//!
//! The brokers, each behind the feature of its module's name:
//!
#![cfg_attr(
    feature = "nats",
    doc = "- [`nats`]: NATS JetStream, through async-nats;"
)]
#![cfg_attr(
    not(feature = "nats"),
    doc = "- `nats`: NATS JetStream, through async-nats;"
)]
#![cfg_attr(feature = "amqp", doc = "- [`amqp`]: RabbitMQ, through lapin;")]
#![cfg_attr(not(feature = "amqp"), doc = "- `amqp`: RabbitMQ, through lapin;")]
#![cfg_attr(
    feature = "redis",
    doc = "- [`redis`]: Redis Streams, through redis-rs."
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "- `redis`: Redis Streams, through redis-rs."
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;
mod builder;
mod consume;
mod consumer;
mod dead_letter;
mod delivery;
mod error;
mod key;
mod message;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
mod outcome;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod telemetry;
pub mod testing;
#[cfg(feature = "postgres")]
mod transaction;

pub use builder::{
    ConsumerBuilder, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_DELAY, DEFAULT_RETRY_DELAY,
    DEFAULT_WAIT,
};
pub use consume::Consumed;
pub use consumer::Consumer;
pub use dead_letter::DeadLetter;
pub use delivery::Delivery;
pub use error::BrokerError;
pub use key::{Derive, KeySource};
pub use message::Message;
pub use outcome::Outcome;

// The README's examples (every crate's) and the consumers' guide, doctested
// here: the one crate whose dev-dependencies reach them all.
#[cfg(all(
    doctest,
    feature = "nats",
    feature = "amqp",
    feature = "redis",
    feature = "postgres"
))]
#[doc = include_str!("../../README.md")]
#[doc = include_str!("../../docs/consumers.md")]
struct GuideDoctests;
