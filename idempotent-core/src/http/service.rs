//! The service the layer wraps around a handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::IDEMPOTENT_REPLAYED;
use super::codec::{HttpCodec, Outcome};
use super::config::Config;
use super::handled::Handled;
use super::handlers::RunToEnd;
use super::problem;
use super::request::{fingerprint, read_body, read_key};
use crate::engine::{Executed, execute};
use crate::record::StorageKey;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service built by [`IdempotencyLayer`](super::IdempotencyLayer).
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
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone is the one that was driven to readiness (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(Arc::clone(&self.config), inner, request))
    }
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    if !config.methods.contains(request.method()) {
        return inner.call(request).await;
    }
    let key = match read_key(request.headers(), &config.header) {
        Ok(Some(key)) => key,
        Ok(None) if config.required => return Ok(problem::missing_key(config.header.as_str())),
        Ok(None) => return inner.call(request).await,
        Err(refused) => return Ok(refused),
    };

    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body, config.body_limit).await {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };

    // Under axum's `Router::nest`, a nested route sees its path without the
    // prefix (`/transfers` for `/accounts/alice/transfers`); axum keeps the
    // path the client sent in `OriginalUri`, so that two nested routes never
    // share keys or replay each other's responses.
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |original| &original.0);
    let fingerprint = fingerprint(&parts.method, uri, &body);
    let route = format!("{} {}", parts.method, uri.path());
    let scope = config.scope.as_ref().and_then(|scope| scope(&parts));
    let storage_key = StorageKey::new(
        config.runtime.namespace(),
        scope.as_deref().unwrap_or(""),
        &route,
        &key,
    );

    let request = Request::from_parts(parts, ReqBody::from(body));
    let response_limit = config.response_limit;
    // A client that disconnects drops this future, and the handler must not
    // be dropped with it (which would release the key half-way through, so
    // that the client's retry ran it again): `RunToEnd` runs it here and, if
    // it is dropped unfinished, moves the rest into a task of its own, which
    // runs the handler to its end and stores its answer for the retry.
    let task_config = Arc::clone(&config);
    let executed = RunToEnd::new(&config.handlers, async move {
        let config = task_config;
        let run = async {
            match inner.call(request).await {
                // Refused before any handler ran (see `Handled`): passed on
                // untouched, and not stored.
                Ok(response) if config.refused(&response) => Outcome::Refused(response),
                Ok(response) => {
                    let declared = response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(0)
                        .max(response.body().size_hint().lower());
                    if declared > response_limit as u64 {
                        return Outcome::Oversized(response);
                    }
                    let (parts, body) = response.into_parts();
                    match Limited::new(body, response_limit).collect().await {
                        Ok(collected) => Outcome::Fresh(parts, collected.to_bytes()),
                        Err(error) if error.is::<LengthLimitError>() => {
                            Outcome::OverLimit(parts.status)
                        }
                        Err(error) => Outcome::BodyFailed(parts.status, error.to_string()),
                    }
                }
                Err(error) => Outcome::Failed(error),
            }
        };
        let codec = HttpCodec(&config);
        execute(
            &config.runtime,
            &config.operation,
            &key,
            storage_key,
            fingerprint,
            &codec,
            run,
        )
        .await
    })
    .await;
    Ok(match executed {
        Ok(Executed { value, .. }) => match value {
            Outcome::Fresh(mut parts, body) => {
                // Only a replay is marked, whatever the handler set; and a
                // fresh answer carries no more than its replays do.
                parts.headers.remove(IDEMPOTENT_REPLAYED);
                parts.extensions.remove::<Handled>();
                Response::from_parts(parts, ResBody::from(body))
            }
            Outcome::Replayed(stored) => {
                let mut response = Response::new(ResBody::from(stored.body));
                *response.status_mut() = stored.status;
                *response.headers_mut() = stored.headers;
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                response
            }
            Outcome::Failed(error) => return Err(error),
            Outcome::BodyFailed(status, detail) => {
                problem::response_failed(&detail, config.stores(status))
            }
            Outcome::Refused(mut response) => {
                response.headers_mut().remove(IDEMPOTENT_REPLAYED);
                response
            }
            Outcome::Oversized(mut response) => {
                response.headers_mut().remove(IDEMPOTENT_REPLAYED);
                tracing::warn!(
                    limit = response_limit,
                    "a response over the layer's response limit was passed on; a retry gets a 500"
                );
                response
            }
            Outcome::OverLimit(_) => {
                tracing::warn!(
                    limit = response_limit,
                    "a response body went over the layer's response limit; answered 500"
                );
                problem::response_too_large(response_limit)
            }
        },
        Err(error) => problem::from_error(&error),
    })
}
