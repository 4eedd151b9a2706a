//! What the broker tests share: the consumer's promises as scenarios any
//! broker runs ([`semantics`]), and the real servers they need.

#![allow(dead_code, unreachable_pub)]

pub mod nats_server;
#[path = "../../../idempotent-core/tests/support/postgres_schema.rs"]
pub mod postgres_schema;
#[path = "../../../idempotent-core/tests/support/redis_server.rs"]
pub mod redis_server;
pub mod semantics;
