//! Shared test support.
#![allow(dead_code, unreachable_pub)]

pub mod bank;
pub mod blackout;
pub mod faulty;
#[cfg(feature = "http")]
pub mod http;
pub mod outage;
#[cfg(feature = "postgres")]
pub mod postgres_schema;
pub mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::{Done, Error, Idempotency, Operation};

/// One call of `operation` with the key `order-1` whose body takes `work`
/// and answers its run number.
pub fn timed_call(
    idem: &Idempotency,
    operation: &'static Operation,
    runs: &Arc<AtomicUsize>,
    work: Duration,
) -> impl std::future::Future<Output = Result<Done<usize>, Error>> + Send + 'static {
    let (idem, runs) = (idem.clone(), Arc::clone(runs));
    async move {
        idem.call(operation)
            .key("order-1")
            .payload(&1)
            .run(async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(work).await;
                Ok::<_, Error>(run)
            })
            .await
    }
}
