//! Tracing: every call runs in an `idempotent` span carrying its key,
//! operation and outcome.
//!
//! A test binary of its own: `tracing` caches each callsite's interest
//! process-wide, so a span first reached by a concurrent test with no
//! subscriber could stay disabled for this one.

use std::collections::HashMap;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation};

#[path = "support/spans.rs"]
mod spans;

use spans::Spans;

static TRACED: Operation = Operation::new("telemetry::traced");

/// Runs `calls` on a runtime of its own, with a memory store, under a
/// subscriber that records spans; returns the fields of every `idempotent`
/// span, in order.
fn idempotent_spans<F: std::future::Future<Output = ()>>(
    calls: impl FnOnce(Idempotency) -> F,
) -> Vec<HashMap<String, String>> {
    let spans = Spans::default();
    tracing::subscriber::with_default(spans.clone(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(calls(Idempotency::new(MemoryStore::new())));
    });
    spans.named("idempotent")
}

#[test]
fn every_call_runs_in_a_span_with_its_key_operation_and_outcome() {
    let calls = idempotent_spans(|idempotency| async move {
        let call = |payload: u64| {
            idempotency
                .call(&TRACED)
                .key("order-7")
                .payload(&payload)
                .run(async { Ok::<_, Error>(1u64) })
        };
        call(1).await.unwrap();
        call(1).await.unwrap();
        call(2).await.unwrap_err();
    });
    let outcomes: Vec<_> = calls
        .iter()
        .map(|s| s.get("outcome").map(String::as_str))
        .collect();
    assert_eq!(
        outcomes,
        [Some("executed"), Some("replayed"), Some("key_reused")]
    );
    for span in calls {
        assert_eq!(span["operation"], "telemetry::traced");
        assert_eq!(span["key"], "order-7");
    }
}

#[idempotent_core::idempotent(key = id, runtime = rt)]
async fn charge(rt: &Idempotency, id: &str) -> Result<u8, Error> {
    Ok(1)
}

struct Desk<Kind>(Idempotency, std::marker::PhantomData<Kind>);
struct Cards;

impl<Kind> Desk<Kind> {
    #[idempotent_core::idempotent(key = id, runtime = self.0)]
    async fn open(&self, id: &str) -> Result<u8, Error> {
        Ok(2)
    }
}

trait Settle {
    fn runtime(&self) -> &Idempotency;

    async fn settle(&self, id: &str) -> Result<u8, Error>;

    #[idempotent_core::idempotent(key = id, runtime = self.runtime())]
    async fn close(&self, id: &str) -> Result<u8, Error> {
        Ok(3)
    }
}

impl Settle for Desk<Cards> {
    fn runtime(&self) -> &Idempotency {
        &self.0
    }

    #[idempotent_core::idempotent(key = id, runtime = self.0)]
    async fn settle(&self, id: &str) -> Result<u8, Error> {
        Ok(4)
    }
}

/// The default operation names, as the compiler really spells them: the
/// path where each function is defined.
#[test]
fn default_operation_names_are_where_the_functions_are_defined() {
    let calls = idempotent_spans(|idempotency| async move {
        let desk = Desk::<Cards>(idempotency.clone(), std::marker::PhantomData);
        charge(&idempotency, "k").await.unwrap();
        desk.open("k").await.unwrap();
        desk.settle("k").await.unwrap();
        desk.close("k").await.unwrap();
    });
    let names: Vec<_> = calls.iter().map(|s| s["operation"].as_str()).collect();
    assert_eq!(
        names,
        [
            "tracing_spans::charge",
            "tracing_spans::Desk::open",
            "<tracing_spans::Desk<tracing_spans::Cards> as tracing_spans::Settle>::settle",
            "tracing_spans::Settle::close for tracing_spans::Desk<tracing_spans::Cards>",
        ]
    );
}
