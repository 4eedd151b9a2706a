//! The layer's own answers: RFC 9457 `application/problem+json` documents
//! for an HTTP caller, gRPC statuses for a gRPC one.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::grpc::{self, Code, Protocol};
use crate::{Error, KeyError};

/// One kind of problem: its status, `type` URI and `title`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    status: StatusCode,
    /// What a gRPC caller gets instead of `status`.
    code: Code,
    slug: &'static str,
    title: &'static str,
}

const MISSING_KEY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    code: Code::INVALID_ARGUMENT,
    slug: "missing-key",
    title: "Idempotency key missing",
};
pub(crate) const MALFORMED_KEY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    code: Code::INVALID_ARGUMENT,
    slug: "malformed-key",
    title: "Idempotency key malformed",
};
pub(crate) const UNREADABLE_BODY: Kind = Kind {
    status: StatusCode::BAD_REQUEST,
    code: Code::INVALID_ARGUMENT,
    slug: "unreadable-body",
    title: "Request body could not be read",
};
const TOO_LARGE: Kind = Kind {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    code: Code::RESOURCE_EXHAUSTED,
    slug: "body-too-large",
    title: "Request body too large",
};
const KEY_REUSED: Kind = Kind {
    status: StatusCode::UNPROCESSABLE_ENTITY,
    code: Code::FAILED_PRECONDITION,
    slug: "key-reused",
    title: "Idempotency key reused with a different request",
};
const IN_PROGRESS: Kind = Kind {
    status: StatusCode::CONFLICT,
    code: Code::ABORTED,
    slug: "in-progress",
    title: "A request with this idempotency key is being processed",
};
const STORE_UNAVAILABLE: Kind = Kind {
    status: StatusCode::SERVICE_UNAVAILABLE,
    code: Code::UNAVAILABLE,
    slug: "store-unavailable",
    title: "Idempotency store unavailable",
};
const RESPONSE_FAILED: Kind = Kind {
    status: StatusCode::BAD_GATEWAY,
    code: Code::INTERNAL,
    slug: "response-failed",
    title: "The handler's response could not be read",
};
const RESPONSE_TOO_LARGE: Kind = Kind {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    code: Code::INTERNAL,
    slug: "response-too-large",
    title: "The handler's response is too large to store",
};
const INTERNAL: Kind = Kind {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    code: Code::INTERNAL,
    slug: "internal",
    title: "Idempotency processing failed",
};

/// One of the layer's own answers, before it is rendered for its caller.
#[derive(Debug)]
pub(crate) struct Problem {
    kind: Kind,
    detail: String,
    /// When to come back: `Retry-After` for an HTTP caller, a `RetryInfo`
    /// for a gRPC one.
    retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Asks the caller to come back after `after` (in whole seconds, rounded
    /// up, at least 1, for `Retry-After`).
    fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The answer: a problem document for an HTTP caller, a trailers-only
    /// gRPC status for a gRPC one.
    pub(crate) fn into_response<B: From<Bytes>>(self, protocol: Protocol) -> Response<B> {
        match protocol {
            Protocol::Http => self.document(),
            Protocol::Grpc => {
                let reason = self.kind.slug.replace('-', "_").to_ascii_uppercase();
                grpc::status_response(self.kind.code, &reason, &self.detail, self.retry_after)
            }
        }
    }

    /// An RFC 9457 problem document.
    fn document<B: From<Bytes>>(self) -> Response<B> {
        let kind = self.kind;
        let body = serde_json::json!({
            "type": format!("urn:idempotent:problem:{}", kind.slug),
            "title": kind.title,
            "status": kind.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(B::from(Bytes::from(body.to_string())));
        *response.status_mut() = kind.status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

pub(crate) fn malformed_key(error: &KeyError) -> Problem {
    Problem::new(
        MALFORMED_KEY,
        format!("the idempotency key is invalid: {error}"),
    )
}

/// The answer, first and replayed, for a handler whose response is over the
/// layer's response `limit` (in bytes): it ran, but its response cannot be
/// stored, so this is stored in its place (when its status is one the layer
/// stores) and a retry never runs it again.
pub(crate) fn response_too_large(limit: usize, stored: bool) -> Problem {
    let retry = if stored {
        "it is not run again"
    } else {
        "nothing was stored, so a retry runs it again"
    };
    Problem::new(
        RESPONSE_TOO_LARGE,
        format!(
            "the request was processed, but its response is over the {limit}-byte limit of what \
             this idempotency layer stores, so it cannot be replayed; {retry}"
        ),
    )
}

/// The answer, first and replayed, for a handler whose response body failed
/// half-way: it ran, so this is stored in its place (when its status is one
/// the layer stores) and a retry never runs it again.
pub(crate) fn response_failed(detail: &str, stored: bool) -> Problem {
    let retry = if stored {
        "it is not run again"
    } else {
        "nothing was stored, so a retry runs it again"
    };
    Problem::new(
        RESPONSE_FAILED,
        format!(
            "the request was processed, but its response failed while it was read ({detail}); \
             {retry}"
        ),
    )
}

/// A body over the layer's `limit` (in bytes).
pub(crate) fn too_large(limit: usize) -> Problem {
    Problem::new(
        TOO_LARGE,
        format!("the body is over the limit of {limit} bytes"),
    )
}

/// A guarded request without its key `header`.
pub(crate) fn missing_key(header: &str) -> Problem {
    Problem::new(
        MISSING_KEY,
        format!("this request needs an `{header}` header"),
    )
}

/// The answer to an error of the engine.
pub(crate) fn from_error(error: &Error) -> Problem {
    match error {
        Error::InvalidKey(error) => malformed_key(error),
        Error::KeyReused { .. } => Problem::new(
            KEY_REUSED,
            "this idempotency key was first used on this route with a different query or body; \
             use a new key for a new request",
        ),
        // The engine's `retry_after` is when the lease runs out, an upper
        // bound (30 s by default) on a request that usually takes far less:
        // ask for a poll in a second instead, unless the lease ends sooner.
        Error::InProgress { retry_after, .. } => Problem::new(
            IN_PROGRESS,
            "the first request with this key has not finished; retry after the delay given",
        )
        .retry_after((*retry_after).min(Duration::from_secs(1))),
        Error::StoreUnavailable(error) => {
            // The request was refused (fail closed): the operator must hear why.
            tracing::warn!(%error, "idempotency store unavailable; the request was refused (503, or gRPC UNAVAILABLE)");
            Problem::new(
                STORE_UNAVAILABLE,
                "the request was not processed because its idempotency could not be guaranteed",
            )
            .retry_after(Duration::from_secs(1))
        }
        Error::LeaseLost { .. } => Problem::new(
            INTERNAL,
            "the request ran, but ran longer than its lease and another request took the key \
             over; its result was not stored",
        ),
        other => {
            // The details (storage keys, store messages) stay in the logs.
            tracing::error!(error = %other, "idempotent request failed");
            Problem::new(
                INTERNAL,
                "the idempotency record of this request could not be processed; see the server's logs",
            )
        }
    }
}
