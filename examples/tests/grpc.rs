//! End-to-end over gRPC: the payment service of `examples/grpc.rs` served by
//! tonic behind the idempotency layer on a real loopback port, called with a
//! real tonic client. A retried charge is replayed (message, status and
//! metadata, trailers included) and charged once; the layer's refusals are
//! real gRPC statuses with their `google.rpc` details.

use std::net::SocketAddr;
use std::time::Duration;

use examples::grpc::proto::payments_client::PaymentsClient;
use examples::grpc::proto::{ChargeReply, ChargeRequest};
use examples::grpc::{Charges, layer, serve};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

/// A server on a free loopback port, stopped when dropped.
struct Server {
    addr: SocketAddr,
    charges: Charges,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start(runtime: Idempotency, charges: Charges) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = charges.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve(listener, served, layer(runtime), shutdown)
                .await
                .expect("the server runs");
        });
        Self {
            addr,
            charges,
            _stop: stop,
        }
    }

    async fn memory() -> Self {
        Self::start(Idempotency::new(MemoryStore::new()), Charges::default()).await
    }

    async fn client(&self) -> PaymentsClient<Channel> {
        PaymentsClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

fn charge_request(key: Option<&str>, amount: u64) -> Request<ChargeRequest> {
    let mut request = Request::new(ChargeRequest {
        amount,
        currency: "USD".to_owned(),
    });
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    request
}

async fn charge(
    client: &mut PaymentsClient<Channel>,
    key: Option<&str>,
    amount: u64,
) -> Result<Response<ChargeReply>, Status> {
    client.charge(charge_request(key, amount)).await
}

/// The metadata a client got (headers and trailers, as tonic merges them
/// for a unary call), less what differs between a first answer and its
/// replay by design: `date` and the replay mark.
fn comparable(metadata: &tonic::metadata::MetadataMap) -> axum::http::HeaderMap {
    let mut headers = metadata.clone().into_headers();
    headers.remove("date");
    headers.remove("idempotent-replayed");
    headers
}

fn replayed(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// The `google.rpc.ErrorInfo` reason of one of the layer's statuses.
fn reason(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .expect("the layer's statuses carry an ErrorInfo");
    assert_eq!(info.domain, "idempotent");
    info.reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_charge_is_replayed_and_charged_once() {
    let server = Server::memory().await;
    let mut client = server.client().await;
    let first = charge(&mut client, Some("order-1"), 4200).await.unwrap();
    assert!(!replayed(first.metadata()));
    for _ in 0..3 {
        let retry = charge(&mut client, Some("order-1"), 4200).await.unwrap();
        assert!(replayed(retry.metadata()), "{:?}", retry.metadata());
        assert_eq!(comparable(retry.metadata()), comparable(first.metadata()));
        assert_eq!(retry.get_ref(), first.get_ref(), "the same message");
    }
    assert_eq!(first.get_ref().charge_id, "ch_1");
    assert_eq!(server.charges.ledger().len(), 1, "charged once");
    assert_eq!(server.charges.runs(), 1);

    // Another key is another charge.
    let second = charge(&mut client, Some("order-2"), 4200).await.unwrap();
    assert_eq!(second.get_ref().charge_id, "ch_2");
    assert_eq!(server.charges.ledger().len(), 2);
}

/// The handler's own refusal of a request (`INVALID_ARGUMENT` for a zero
/// amount) is a final answer: stored, and replayed with its code and
/// message; the handler does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_error_status_is_replayed_as_it_was() {
    let server = Server::memory().await;
    let mut client = server.client().await;
    let first = charge(&mut client, Some("zero-1"), 0).await.unwrap_err();
    assert_eq!(first.code(), Code::InvalidArgument);
    assert!(!replayed(first.metadata()));
    let retry = charge(&mut client, Some("zero-1"), 0).await.unwrap_err();
    assert_eq!(
        (retry.code(), retry.message()),
        (first.code(), first.message())
    );
    assert!(replayed(retry.metadata()));
    assert_eq!(comparable(retry.metadata()), comparable(first.metadata()));
    assert_eq!(server.charges.runs(), 1);
    assert!(server.charges.ledger().is_empty());
}

/// The same key with another charge: `FAILED_PRECONDITION` (the key is
/// bound to the first charge), and nothing is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_with_another_charge_is_failed_precondition() {
    let server = Server::memory().await;
    let mut client = server.client().await;
    charge(&mut client, Some("order-1"), 4200).await.unwrap();
    let reused = charge(&mut client, Some("order-1"), 9900)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    assert_eq!(reason(&reused), "KEY_REUSED");
    assert!(
        reused.message().contains("different"),
        "{}",
        reused.message()
    );
    assert_eq!(server.charges.ledger().len(), 1);
}

/// A duplicate of a charge still running: `ABORTED` with a `RetryInfo`
/// (and `grpc-retry-pushback-ms`); once the first has finished, the retry
/// is its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_charge_still_running_is_aborted_with_retry_info() {
    let charges = Charges::with_work(Duration::from_millis(500));
    let server = Server::start(Idempotency::new(MemoryStore::new()), charges).await;
    let mut client = server.client().await;
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { charge(&mut client, Some("slow-1"), 4200).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.charges.runs() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first charge starts");
    let duplicate = charge(&mut client, Some("slow-1"), 4200).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::Aborted, "{duplicate:?}");
    assert_eq!(reason(&duplicate), "IN_PROGRESS");
    let delay = duplicate
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert!(duplicate.metadata().contains_key("grpc-retry-pushback-ms"));

    let first = first.await.unwrap().unwrap();
    let retry = charge(&mut client, Some("slow-1"), 4200).await.unwrap();
    assert!(replayed(retry.metadata()));
    assert_eq!(retry.get_ref(), first.get_ref());
    assert_eq!(server.charges.ledger().len(), 1);
}

/// No key, or a malformed one: `INVALID_ARGUMENT`, and the handler does
/// not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_without_a_valid_key_is_invalid_argument() {
    let server = Server::memory().await;
    let mut client = server.client().await;
    let missing = charge(&mut client, None, 4200).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert_eq!(reason(&missing), "MISSING_KEY");
    assert!(missing.message().contains("idempotency-key"));
    let malformed = charge(&mut client, Some("two words"), 4200)
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(reason(&malformed), "MALFORMED_KEY");
    assert_eq!(server.charges.runs(), 0);
}

/// A store that cannot be reached: `UNAVAILABLE` with a `RetryInfo`, and the
/// charge never runs (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_unavailable_and_nothing_is_charged() {
    // A real refused connection: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = RedisStore::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("a lazy connection is built without reaching Redis");
    let server = Server::start(Idempotency::new(store), Charges::default()).await;
    let mut client = server.client().await;
    let down = charge(&mut client, Some("order-1"), 4200)
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(reason(&down), "STORE_UNAVAILABLE");
    assert!(down.get_details_retry_info().is_some());
    assert_eq!(server.charges.runs(), 0);
}
