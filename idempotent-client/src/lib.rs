//! A `reqwest`-based client whose retries reuse one idempotency key, kept in
//! a durable journal so that not even a crash of the caller causes a second
//! charge.
//!
//! Work in progress. What is here so far is the retry policy the client will
//! use: [`RetryPolicy`] (exponential backoff with full jitter, bounded by
//! attempts and elapsed time, built on the `backon` crate), which answers are
//! worth retrying ([`is_retryable_status`]), and how long a server asked us to
//! wait ([`retry_after`]). The client itself, its journal and the `pay`
//! example come next; their design is in the project's DESIGN.md ("Client").

mod budget;
mod client;
mod journal;
mod retry;

pub use budget::RetryBudget;
pub use client::{
    ClientBuilder, ClientError, DEFAULT_RETENTION, IDEMPOTENCY_KEY, IdempotentClient,
    RequestBuilder, Sent,
};
pub use journal::{FileJournal, Intent, Journal, JournalError, MemoryJournal};
pub use retry::{Retries, RetryPolicy, is_retryable_status, retry_after};
