//! A `reqwest`-based client whose retries reuse one idempotency key, kept in
//! a durable journal so that not even a crash of the caller causes a second
//! charge.
//!
//! - [`IdempotentClient`]: name each logical request with an
//!   [`intent`](RequestBuilder::intent); its key is made and written to the
//!   [`Journal`] before the first attempt, and every retry, and every re-run
//!   of the program with the same intent name, sends that key.
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
mod journal;
mod request;
mod retry;
mod send;

/// The `reqwest` this client is built on (0.13): use it for the
/// [`http_client`](ClientBuilder::http_client) you pass in and the
/// responses you get back, rather than a `reqwest` dependency of your own
/// whose version could differ.
pub use reqwest;

pub use answer::{is_retryable_status, retry_after};
pub use budget::{RetryBudget, RetryBudgetBuilder};
pub use client::{ClientBuilder, DEFAULT_RESPONSE_LIMIT, DEFAULT_RETENTION, IdempotentClient};
pub use error::ClientError;
pub use journal::{FileJournal, Intent, Journal, JournalError, MemoryJournal};
pub use request::{IDEMPOTENCY_KEY, RequestBuilder};
pub use retry::{Retries, RetryPolicy, RetryPolicyBuilder};
pub use send::Sent;
