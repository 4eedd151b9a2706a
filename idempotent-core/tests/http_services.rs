//! The layer in front of any tower service, no framework: a plain
//! `tower::service_fn` over `http_body_util` bodies. Bodies go in and come
//! out whole, trailers included; a request that passes through is not read;
//! a gRPC caller (told by its `content-type`) gets gRPC statuses, and a
//! gRPC answer is stored by its `grpc-status`.
#![cfg(feature = "http")]

mod support;

use std::convert::Infallible;
use std::future::Ready;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use idempotent_core::http::{IdempotencyLayerBuilder, RequestBody, ResponseBody};
use support::http::{Calls, memory};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

/// A body of bytes, then trailers.
type Trailed = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

fn trailed(data: impl Into<Bytes>, trailers: HeaderMap) -> Trailed {
    Full::new(data.into()).with_trailers(std::future::ready(Some(Ok(trailers))))
}

fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|&(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect()
}

type Served = BoxCloneService<Request<Trailed>, Response<ResponseBody<Trailed>>, Infallible>;

/// A service that echoes the request's body, with the status in `x-status`
/// (default 201), the count of the request's trailers in
/// `x-request-trailers`, and trailers of its own: `x-run` (its run number)
/// and `grpc-status` from the request's `x-grpc-status`; behind the layer
/// `layer` builds.
fn served(layer: IdempotencyLayerBuilder) -> (Served, Calls) {
    let calls = Calls::default();
    let counted = calls.clone();
    let echo = tower::service_fn(move |request: Request<RequestBody<Trailed>>| {
        let calls = counted.clone();
        async move {
            let run = calls.add();
            let (parts, body) = request.into_parts();
            let collected = body.collect().await?;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-run", HeaderValue::from(run));
            if let Some(code) = parts.headers.get("x-grpc-status") {
                trailers.insert("grpc-status", code.clone());
            }
            let status = parts
                .headers
                .get("x-status")
                .map_or(201, |s| s.to_str().unwrap().parse().unwrap());
            let response = Response::builder()
                .status(status)
                .header(
                    "x-request-trailers",
                    collected.trailers().map_or(0, HeaderMap::len),
                )
                .body(trailed(collected.to_bytes(), trailers))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let service = ServiceBuilder::new().layer(layer.build()).service(echo);
    (BoxCloneService::new(service), calls)
}

/// A response as a client reads it: status, headers, body and trailers.
async fn call(
    service: &Served,
    request: Request<Trailed>,
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// A `POST /charges`, with `key` if given.
fn post(key: Option<&str>) -> http::request::Builder {
    let mut request = Request::post("/charges");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
}

/// The service sees the request's body and trailers, and a replay gives
/// back the first answer's status, headers, body and trailers.
#[tokio::test]
async fn a_plain_tower_service_is_replayed_with_its_trailers() {
    let (service, calls) = served(memory());
    let charge = || {
        post(Some("order-1"))
            .body(trailed("charge 100", fields(&[("x-signature", "abc")])))
            .unwrap()
    };
    let (status, headers, body, trailers) = call(&service, charge()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "charge 100");
    assert_eq!(
        headers["x-request-trailers"], "1",
        "the request's trailers went in"
    );
    assert!(!headers.contains_key("idempotent-replayed"));
    let trailers = trailers.expect("the answer's trailers");
    assert_eq!(trailers["x-run"], "1");
    for _ in 0..2 {
        let (again, replay, replayed_body, replayed_trailers) = call(&service, charge()).await;
        assert_eq!((again, replayed_body.as_ref()), (status, body.as_ref()));
        assert_eq!(replay["idempotent-replayed"], "true");
        assert_eq!(replay["x-request-trailers"], "1");
        assert_eq!(
            replayed_trailers.as_ref(),
            Some(&trailers),
            "the same trailers"
        );
    }
    assert_eq!(calls.get(), 1);
}

/// A request that passes through (a safe method here) is handed on as it
/// streams, not read by the layer: a body over the layer's limit reaches
/// the service.
#[tokio::test]
async fn a_request_that_passes_through_is_not_read_by_the_layer() {
    let (service, calls) = served(memory().body_limit(4));
    let large = || {
        Request::get("/charges")
            .body(trailed("more than four bytes", HeaderMap::new()))
            .unwrap()
    };
    let (status, _, body, _) = call(&service, large()).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::CREATED, &b"more than four bytes"[..])
    );
    let guarded = post(Some("k"))
        .body(trailed("more than four bytes", HeaderMap::new()))
        .unwrap();
    assert_eq!(
        call(&service, guarded).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(calls.get(), 1);
}

/// A gRPC call (as far as the layer can tell), with `key` if given, which
/// the service answers with HTTP `200`, as gRPC servers do.
fn grpc(key: Option<&str>) -> http::request::Builder {
    post(key)
        .header("content-type", "application/grpc")
        .header("x-status", "200")
}

/// A gRPC caller is answered with gRPC statuses, "trailers-only" (HTTP
/// `200`, the status in the headers), not problem documents.
#[tokio::test]
async fn a_grpc_caller_gets_grpc_statuses() {
    let (service, calls) = served(memory());
    let (status, headers, body, _) = call(
        &service,
        grpc(None).body(trailed("m1", HeaderMap::new())).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "3", "INVALID_ARGUMENT");
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("idempotency-key")
    );
    assert!(headers.contains_key("grpc-status-details-bin"));
    assert!(body.is_empty());
    assert_eq!(calls.get(), 0);

    let first = grpc(Some("k")).header("x-grpc-status", "0");
    call(
        &service,
        first.body(trailed("m1", HeaderMap::new())).unwrap(),
    )
    .await;
    let other = grpc(Some("k")).header("x-grpc-status", "0");
    let (status, headers, _, _) = call(
        &service,
        other.body(trailed("m2", HeaderMap::new())).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "9", "FAILED_PRECONDITION");
    assert_eq!(calls.get(), 1);
}

/// A gRPC answer is stored by its `grpc-status` (all of them HTTP `200`):
/// a final one (`OK`, `FAILED_PRECONDITION`) is replayed; one that says
/// "try again" (`UNAVAILABLE`) is not, and the retry runs the service.
#[tokio::test]
async fn grpc_answers_are_stored_by_their_grpc_status() {
    let (service, calls) = served(memory());
    let answering = |key: &'static str, code: &'static str| {
        grpc(Some(key))
            .header("x-grpc-status", code)
            .body(trailed("m", HeaderMap::new()))
            .unwrap()
    };
    for (code, stored) in [("0", true), ("9", true), ("14", false), ("13", false)] {
        let before = calls.get();
        let (_, _, _, first) = call(&service, answering(code, code)).await;
        let (_, headers, _, again) = call(&service, answering(code, code)).await;
        assert_eq!(first.as_ref().unwrap()["grpc-status"], code);
        assert_eq!(again.as_ref().unwrap()["grpc-status"], code);
        assert_eq!(
            headers.contains_key("idempotent-replayed"),
            stored,
            "{code}"
        );
        let runs = if stored { 1 } else { 2 };
        assert_eq!(calls.get() - before, runs, "grpc-status {code}");
    }
}

/// A gRPC answer with no `grpc-status` at all (a broken server, a proxy's
/// page) is not a final answer: not stored, and the retry runs again.
#[tokio::test]
async fn a_grpc_answer_without_a_status_is_not_stored() {
    let (service, calls) = served(memory());
    let request = || {
        grpc(Some("no-status"))
            .body(trailed("m", HeaderMap::new()))
            .unwrap()
    };
    let (status, _, _, trailers) = call(&service, request()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!trailers.unwrap().contains_key("grpc-status"));
    let (_, headers, _, _) = call(&service, request()).await;
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(calls.get(), 2, "the retry ran the service again");
}
