//! RFC 9457 `application/problem+json` answers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::{Error, KeyError};

/// One kind of problem: its status, `type` URI and `title`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
}

const MISSING_KEY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    slug: "missing-key",
    title: "Idempotency key missing",
};
pub(crate) const MALFORMED_KEY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    slug: "malformed-key",
    title: "Idempotency key malformed",
};
pub(crate) const UNREADABLE_BODY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    slug: "unreadable-body",
    title: "Request body could not be read",
};
const TOO_LARGE: Kind = Kind {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    slug: "body-too-large",
    title: "Request body too large",
};
const KEY_REUSED: Kind = Kind {
    status: StatusCode::UNPROCESSABLE_ENTITY,
    slug: "key-reused",
    title: "Idempotency key reused with a different request",
};
const IN_PROGRESS: Kind = Kind {
    status: StatusCode::CONFLICT,
    slug: "in-progress",
    title: "A request with this idempotency key is being processed",
};
const STORE_UNAVAILABLE: Kind = Kind {
    status: StatusCode::SERVICE_UNAVAILABLE,
    slug: "store-unavailable",
    title: "Idempotency store unavailable",
};
const RESPONSE_FAILED: Kind = Kind {
    status: StatusCode::BAD_GATEWAY,
    slug: "response-failed",
    title: "The handler's response could not be read",
};
const RESPONSE_TOO_LARGE: Kind = Kind {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "response-too-large",
    title: "The handler's response is too large to store",
};
const INTERNAL: Kind = Kind {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "internal",
    title: "Idempotency processing failed",
};

/// A problem document.
pub(crate) fn problem<B: From<Bytes>>(kind: Kind, detail: &str) -> Response<B> {
    let body = serde_json::json!({
        "type": format!("urn:idempotent:problem:{}", kind.slug),
        "title": kind.title,
        "status": kind.status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(B::from(Bytes::from(body.to_string())));
    *response.status_mut() = kind.status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub(crate) fn malformed_key<B: From<Bytes>>(error: &KeyError) -> Response<B> {
    problem(
        MALFORMED_KEY,
        &format!("the idempotency key is invalid: {error}"),
    )
}

/// The answer, first and replayed, for a handler whose response is over the
/// layer's response `limit` (in bytes): it ran, but its response cannot be
/// stored, so this is stored in its place and a retry never runs it again.
pub(crate) fn response_too_large<B: From<Bytes>>(limit: usize) -> Response<B> {
    problem(
        RESPONSE_TOO_LARGE,
        &format!(
            "the request was processed, but its response is over the {limit}-byte limit of what \
             this idempotency layer stores, so it cannot be replayed; it is not run again"
        ),
    )
}

/// The answer, first and replayed, for a handler whose response body failed
/// half-way: it ran, so this is stored in its place (when its status is one
/// the layer stores) and a retry never runs it again.
pub(crate) fn response_failed<B: From<Bytes>>(detail: &str, stored: bool) -> Response<B> {
    let retry = if stored {
        "it is not run again"
    } else {
        "nothing was stored, so a retry runs it again"
    };
    problem(
        RESPONSE_FAILED,
        &format!(
            "the request was processed, but its response failed while it was read ({detail}); \
             {retry}"
        ),
    )
}

/// A body over the layer's `limit` (in bytes).
pub(crate) fn too_large<B: From<Bytes>>(limit: usize) -> Response<B> {
    problem(
        TOO_LARGE,
        &format!("the body is over the limit of {limit} bytes"),
    )
}

/// A guarded request without its key `header`.
pub(crate) fn missing_key<B: From<Bytes>>(header: &str) -> Response<B> {
    problem(
        MISSING_KEY,
        &format!("this request needs an `{header}` header"),
    )
}

/// The answer to an error of the engine.
pub(crate) fn from_error<B: From<Bytes>>(error: &Error) -> Response<B> {
    match error {
        Error::InvalidKey(error) => malformed_key(error),
        Error::KeyReused { .. } => problem(
            KEY_REUSED,
            "this idempotency key was first used on this route with a different query or body; \
             use a new key for a new request",
        ),
        // The engine's `retry_after` is when the lease runs out, an upper
        // bound (30 s by default) on a request that usually takes far less:
        // ask for a poll in a second instead, unless the lease ends sooner.
        Error::InProgress { retry_after, .. } => with_retry_after(
            problem(
                IN_PROGRESS,
                "the first request with this key has not finished; retry after the delay given",
            ),
            (*retry_after).min(Duration::from_secs(1)),
        ),
        Error::StoreUnavailable(error) => {
            // The request was refused (fail closed): the operator must hear why.
            tracing::warn!(%error, "idempotency store unavailable; answered 503");
            with_retry_after(
                problem(
                    STORE_UNAVAILABLE,
                    "the request was not processed because its idempotency could not be guaranteed",
                ),
                Duration::from_secs(1),
            )
        }
        Error::LeaseLost { .. } => problem(
            INTERNAL,
            "the request ran, but ran longer than its lease and another request took the key \
             over; its result was not stored",
        ),
        other => {
            // The details (storage keys, store messages) stay in the logs.
            tracing::error!(error = %other, "idempotent request failed");
            problem(
                INTERNAL,
                "the idempotency record of this request could not be processed; see the server's logs",
            )
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn with_retry_after<B>(mut response: Response<B>, after: Duration) -> Response<B> {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
