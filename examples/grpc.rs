//! A payment service over gRPC (tonic), behind the same idempotency layer
//! as the HTTP examples: `Charge` charges a card once per key, however often
//! it is called. `grpc-server` serves it; `examples/tests/grpc.rs` calls it
//! with a real tonic client.
//!
//! The key travels in the `idempotency-key` metadata entry. The layer sits
//! in front of every method (`Server::builder().layer(..)`) and answers
//! gRPC calls with gRPC statuses (see the `http` module of
//! `idempotent-core`): a key reused with another charge is
//! `FAILED_PRECONDITION`, a duplicate of a charge still running `ABORTED`
//! with a `RetryInfo`, a missing key `INVALID_ARGUMENT`, a store that is
//! down `UNAVAILABLE`. A retry of a finished charge gets its reply again,
//! message, status and trailers, with `idempotent-replayed: true`.
//!
//! ```no_run
//! use examples::grpc::{Charges, layer, serve};
//! use idempotent_core::Idempotency;
//! use idempotent_core::memory::MemoryStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! let layer = layer(Idempotency::new(MemoryStore::new()));
//! serve(listener, Charges::default(), layer, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_core::Idempotency;
use idempotent_core::http::IdempotencyLayer;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use proto::payments_server::{Payments, PaymentsServer};
use proto::{ChargeReply, ChargeRequest};

/// The code generated from `proto/payments.proto` (`payments.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("payments.v1");
}

/// The payment service: each charge is a side effect, kept in a ledger.
/// Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Charges {
    ledger: Arc<Mutex<Vec<ChargeReply>>>,
    runs: Arc<AtomicUsize>,
    work: Duration,
}

impl Charges {
    /// A service whose every charge takes `work` (a card network's delay).
    pub fn with_work(work: Duration) -> Self {
        Self {
            work,
            ..Self::default()
        }
    }

    /// The charges made, in order.
    pub fn ledger(&self) -> Vec<ChargeReply> {
        self.ledger.lock().expect("the ledger").clone()
    }

    /// How many times `Charge` ran, whatever it answered.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Payments for Charges {
    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeReply>, Status> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let ChargeRequest { amount, currency } = request.into_inner();
        // The request's own faults: final answers, stored and replayed.
        if amount == 0 {
            return Err(Status::invalid_argument("the amount must be positive"));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Status::invalid_argument(format!(
                "`{currency}` is not an ISO 4217 currency code"
            )));
        }
        tokio::time::sleep(self.work).await;
        let mut ledger = self.ledger.lock().expect("the ledger");
        let charge = ChargeReply {
            charge_id: format!("ch_{}", ledger.len() + 1),
            amount,
            currency,
        };
        ledger.push(charge.clone());
        Ok(Response::new(charge))
    }
}

/// The idempotency layer in front of the service, on `runtime`'s store.
/// One tenant here (the HTTP example scopes keys to the caller's account).
pub fn layer(runtime: Idempotency) -> IdempotencyLayer {
    IdempotencyLayer::builder(runtime).single_tenant().build()
}

/// Serves `charges` behind `layer` on `listener` (HTTP/2, no TLS) until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    charges: Charges,
    layer: IdempotencyLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(PaymentsServer::new(charges))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
