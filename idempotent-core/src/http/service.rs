//! The service the layer wraps around an inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::body::{RequestBody, ResponseBody};
use super::codec::{HttpCodec, Outcome};
use super::config::Config;
use super::future::ResponseFuture;
use super::grpc::Protocol;
use super::handled::Handled;
use super::header::IDEMPOTENT_REPLAYED;
use super::problem;
use super::request::{client_uri, fingerprint, key, whole_body};
use super::tracker::RunToEnd;
use crate::IdempotencyKey;
use crate::engine::{Claimed, Done, execute_call};
use crate::record::StorageKey;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service built by [`IdempotencyLayer`](super::IdempotencyLayer)
/// around an inner service `S`.
///
/// It takes requests of any body (`http_body::Body`) and hands them to `S`
/// with a [`RequestBody`]; it answers with a [`ResponseBody`] around `S`'s
/// body, whatever that is. axum's routers and tonic's servers serve it as
/// they are.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use idempotent_core::http::{IdempotencyLayer, RequestBody};
/// use idempotent_core::Idempotency;
/// use idempotent_core::memory::MemoryStore;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A plain tower service, no framework.
/// let charge = tower::service_fn(|request: Request<RequestBody<Full<Bytes>>>| async move {
///     let body = request.into_body().collect().await?.to_bytes();
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
/// });
/// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
///     .single_tenant()
///     .build();
/// let service = ServiceBuilder::new().layer(layer).service(charge);
/// let request = Request::post("/charges")
///     .header("idempotency-key", "order-42")
///     .body(Full::new(Bytes::from_static(b"100")))
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "100");
/// # }
/// ```
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService").finish_non_exhaustive()
    }
}

impl<S> IdempotencyService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: tower::Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if !config.methods.contains(request.method()) {
            return ResponseFuture::passthrough(self.inner.call(request.map(RequestBody::inner)));
        }
        let protocol = Protocol::of(request.headers());
        let key = match key(request.headers(), &config.header) {
            Ok(Some(key)) => key,
            Ok(None) if config.required => {
                let refused = problem::missing_key(config.header.as_str());
                return ResponseFuture::answered(refused.into_response(protocol));
            }
            Ok(None) => {
                return ResponseFuture::passthrough(
                    self.inner.call(request.map(RequestBody::inner)),
                );
            }
            Err(refused) => return ResponseFuture::answered(refused.into_response(protocol)),
        };
        // The clone is the one that was driven to readiness (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::guarded(Box::pin(guarded(
            Arc::clone(config),
            inner,
            request,
            key,
            protocol,
        )))
    }
}

/// A guarded request with its `key`: its body read, its key claimed, the
/// inner service run (to its end, also if this future is dropped) and its
/// answer stored; or the stored answer replayed.
async fn guarded<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqBody>,
    key: IdempotencyKey,
    protocol: Protocol,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: tower::Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let (body, trailers) = match whole_body(&parts.headers, body, config.body_limit).await {
        Ok(body) => body,
        Err(refused) => return Ok(refused.into_response(protocol)),
    };

    let uri = client_uri(&parts);
    let fingerprint = fingerprint(&parts.method, uri, &body);
    let route = format!("{} {}", parts.method, uri.path());
    let scope = config.scope.as_ref().and_then(|scope| scope(&parts));
    let storage_key = StorageKey::new(
        config.runtime.namespace(),
        scope.as_deref().unwrap_or(""),
        &route,
        &key,
    );

    let request = Request::from_parts(parts, RequestBody::whole(body, trailers));
    let response_limit = config.response_limit;
    // A client that disconnects drops this future, and the handler must not
    // be dropped with it (which would release the key half-way through, so
    // that the client's retry ran it again): `RunToEnd` runs it here and, if
    // it is dropped unfinished, moves the rest into a task of its own, which
    // runs the handler to its end and stores its answer for the retry.
    let task_config = Arc::clone(&config);
    let executed = RunToEnd::new(&config.tracker, async move {
        let config = task_config;
        let run = async {
            match inner.call(request).await {
                // Refused before any handler ran (see `Handled`): passed on
                // untouched, and not stored.
                Ok(response) if config.refused(&response) => Outcome::Refused(response),
                Ok(response) => {
                    // What its head says; a gRPC status in its trailers is
                    // read with them.
                    let stored =
                        config.stores_answer(response.status(), response.headers(), None, protocol);
                    let declared = response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(0)
                        .max(response.body().size_hint().lower());
                    if declared > response_limit as u64 {
                        return Outcome::Oversized { response, stored };
                    }
                    let (parts, body) = response.into_parts();
                    match Limited::new(body, response_limit).collect().await {
                        Ok(collected) => {
                            let trailers = collected.trailers().cloned();
                            Outcome::Fresh(parts, collected.to_bytes(), trailers)
                        }
                        Err(error) if error.is::<LengthLimitError>() => {
                            Outcome::OverLimit { stored }
                        }
                        Err(error) => Outcome::BodyFailed {
                            stored,
                            detail: error.to_string(),
                        },
                    }
                }
                Err(error) => Outcome::Failed(error),
            }
        };
        let codec = HttpCodec {
            config: &config,
            protocol,
        };
        let call = Claimed {
            runtime: &config.runtime,
            operation: &config.operation,
            key: &key,
            storage_key,
            fingerprint,
            steps: None,
        };
        execute_call(call, &codec, run).await
    })
    .await;
    Ok(match executed {
        Ok(Done { value, .. }) => match value {
            Outcome::Fresh(mut parts, body, trailers) => {
                // Only a replay is marked, whatever the handler set; and a
                // fresh answer carries no more than its replays do.
                parts.headers.remove(IDEMPOTENT_REPLAYED);
                parts.extensions.remove::<Handled>();
                Response::from_parts(parts, ResponseBody::whole(body, trailers))
            }
            Outcome::Replayed(stored) => {
                let mut response = Response::new(ResponseBody::whole(stored.body, stored.trailers));
                *response.status_mut() = stored.status;
                *response.headers_mut() = stored.headers;
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                response
            }
            Outcome::Failed(error) => return Err(error),
            Outcome::BodyFailed { stored, detail } => {
                problem::response_failed(&detail, stored).into_response(protocol)
            }
            Outcome::Refused(mut response) => {
                response.headers_mut().remove(IDEMPOTENT_REPLAYED);
                response.map(ResponseBody::inner)
            }
            Outcome::Oversized {
                mut response,
                stored,
            } => {
                response.headers_mut().remove(IDEMPOTENT_REPLAYED);
                if stored {
                    tracing::warn!(
                        limit = response_limit,
                        "a response over the layer's response limit was passed on; a retry gets a 500"
                    );
                } else {
                    tracing::warn!(
                        limit = response_limit,
                        "a response over the layer's response limit was passed on and not stored; \
                         a retry runs the handler again"
                    );
                }
                response.map(ResponseBody::inner)
            }
            Outcome::OverLimit { stored } => {
                tracing::warn!(
                    limit = response_limit,
                    "a response body went over the layer's response limit; answered 500"
                );
                problem::response_too_large(response_limit, stored).into_response(protocol)
            }
        },
        Err(error) => problem::from_error(&error).into_response(protocol),
    })
}
