//! A `reqwest`-based client whose retries reuse one idempotency key, kept in
//! a durable journal so that not even a crash of the caller causes a second
//! charge.
//!
//! - [`IdempotentClient`]: name each logical request with an
//!   [`intent`](RequestBuilder::intent); its key is made and written to the
//!   [`Journal`] before the first attempt, and every retry, and every re-run
//!   of the program with the same intent name, sends that key.
//! - [`IdempotencyMiddleware`]: the same as a `reqwest_middleware::Middleware`,
//!   to stack with your own (tracing, auth); name a request's intent with an
//!   [`IntentName`] in its extensions. [`IdempotentClient`] is this
//!   middleware on a `reqwest` client ([`default_http_client`]).
//! - [`FileJournal`] (redb, crash-safe, group commits) or [`MemoryJournal`].
//!   [`IdempotentClient::pending`] and [`IdempotentClient::resume`] finish
//!   what a crash interrupted.
//! - [`RetryPolicy`]: exponential backoff with full jitter, bounded by
//!   attempts and by an overall deadline (`max_elapsed`), built on the
//!   `backon` crate;
//!   [`is_retryable_status`] says which statuses are retried (the client
//!   itself never retries an answer marked `Idempotent-Replayed: true`: the
//!   server's stored answer, final whatever its status), and
//!   [`retry_after`] honours the server's `Retry-After`.
//! - [`RetryBudget`]: a client-wide token bucket, so an outage does not
//!   become a retry storm.

mod answer;
mod attempt;
mod budget;
mod client;
mod error;
mod extension;
mod intent;
mod journal;
mod middleware;
mod request;
mod retry;
mod send;

/// The `reqwest-middleware` the [`IdempotencyMiddleware`] plugs into (0.5):
/// build your stack with it, rather than a dependency of your own whose
/// version could differ.
pub use reqwest_middleware;

/// The `reqwest` this client is built on (0.13): use it for the
/// [`http_client`](ClientBuilder::http_client) you pass in and the
/// responses you get back, rather than a `reqwest` dependency of your own
/// whose version could differ.
pub use reqwest;

pub use answer::{is_retryable_status, retry_after};
pub use budget::{RetryBudget, RetryBudgetBuilder};
pub use client::{ClientBuilder, IdempotentClient, default_http_client};
pub use error::ClientError;
pub use extension::{Delivery, IntentName};
pub use journal::{FileJournal, Intent, Journal, JournalError, MemoryJournal};
pub use middleware::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_RESPONSE_LIMIT, DEFAULT_RETENTION, IdempotencyMiddleware,
    MiddlewareBuilder,
};
pub use request::{IDEMPOTENCY_KEY, RequestBuilder, Sent};
pub use retry::{Retries, RetryPolicy, RetryPolicyBuilder};
