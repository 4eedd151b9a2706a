//! The consumers' metric names (through the [`metrics`] facade, like the
//! engine's own in [`idempotent_core::telemetry`]).

use std::time::Duration;

use crate::outcome::Outcome;

/// Counter: settled deliveries (labels `stream`, `consumer` and `outcome`:
/// `ran`, `replayed` (a duplicate dropped), `retried`, `dead_lettered`).
pub const MESSAGES: &str = "idempotent_messages_total";
/// Counter: messages moved to the dead-letter destination (labels `stream`,
/// `consumer` and `reason`, see [`DeadLetter::reason`](crate::DeadLetter::reason)).
pub const DEAD_LETTERED: &str = "idempotent_messages_dead_lettered_total";
/// Histogram: how long the handler ran, in seconds, when it ran (labels
/// `stream`, `consumer`).
pub const HANDLER_LATENCY: &str = "idempotent_message_handler_seconds";
/// Counter: times a delivery waited for the store to come back (labels
/// `stream`, `consumer`); nothing runs or is acknowledged meanwhile.
pub const STORE_WAITS: &str = "idempotent_message_store_waits_total";

pub(crate) fn settled(stream: &str, consumer: &'static str, outcome: &Outcome) {
    metrics::counter!(MESSAGES, "stream" => stream.to_owned(), "consumer" => consumer, "outcome" => outcome.label())
        .increment(1);
    if let Outcome::DeadLettered(letter) = outcome {
        metrics::counter!(DEAD_LETTERED, "stream" => stream.to_owned(), "consumer" => consumer, "reason" => letter.reason())
            .increment(1);
    }
}

pub(crate) fn handler_ran(stream: &str, consumer: &'static str, took: Duration) {
    metrics::histogram!(HANDLER_LATENCY, "stream" => stream.to_owned(), "consumer" => consumer)
        .record(took.as_secs_f64());
}

pub(crate) fn store_waited(stream: &str, consumer: &'static str) {
    metrics::counter!(STORE_WAITS, "stream" => stream.to_owned(), "consumer" => consumer)
        .increment(1);
}
