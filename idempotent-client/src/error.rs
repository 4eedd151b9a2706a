//! What can go wrong in [`RequestBuilder::send`](crate::RequestBuilder::send)
//! and in the [`IdempotencyMiddleware`](crate::IdempotencyMiddleware).

use reqwest::{Response, StatusCode};

use crate::journal::JournalError;

/// What can go wrong in [`RequestBuilder::send`](crate::RequestBuilder::send).
/// The [`IdempotencyMiddleware`](crate::IdempotencyMiddleware) returns these
/// as `reqwest_middleware::Error::Middleware` (but a transport error, which
/// stays `reqwest_middleware::Error::Reqwest`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The journal could not record the intent: nothing was sent.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The last attempt failed in transport (after any retries).
    #[error("request failed after {attempts} attempt(s): {source}")]
    Http {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered that this key was first used with a different
    /// request: a `422` problem document of type
    /// `urn:idempotent:problem:key-reused` (this library's servers), or
    /// whose `type` or `title` names the idempotency key (the IETF draft's).
    /// Any other `422` (a bad value) is a final answer, returned as it is.
    /// A bug in the caller (an explicit key reused), never retried.
    #[error("idempotency key `{key}` was already used with a different request")]
    KeyReused {
        /// The key.
        key: String,
        /// The server's answer.
        response: Box<Response>,
    },
    /// The server's final answer is a `4xx` other than its key-reused
    /// answer: the request itself is refused (a bad value, a missing
    /// resource, a failed check), and sending it again would get the same.
    /// (A `4xx` that says try again, `409` or `429`, when the retries ran
    /// out, is an answer in [`Sent`](crate::Sent), and its intent stays
    /// pending; its replay by the server is final, and `Rejected`.)
    /// Its intent is answered. Only [`IdempotentClient`](crate::IdempotentClient)
    /// returns it; the middleware passes the answer on, as `reqwest` does.
    #[error("the server refused the request: {status}")]
    Rejected {
        /// The answer's status.
        status: StatusCode,
        /// The answer's headers.
        headers: Box<reqwest::header::HeaderMap>,
        /// The answer's body, read whole.
        body: bytes::Bytes,
        /// The idempotency key the request carried, if any.
        key: Option<String>,
        /// Attempts made, the first included.
        attempts: u32,
    },
    /// The intent was first used with a different request (another
    /// method, path and query, or body), which its key belongs to; nothing
    /// was sent. Sending it would get the server's 422 ([`KeyReused`](Self::KeyReused))
    /// at best, or a replay of the other request's answer from a server
    /// that does not fingerprint bodies. A new request needs a new intent
    /// name.
    #[error(
        "intent `{intent}` was already used with a different request (method, path, query or \
         body); its key `{key}` belongs to that one: give this request another intent name"
    )]
    IntentReused {
        /// The intent's name.
        intent: String,
        /// The key journaled for the first request.
        key: String,
    },
    /// The final answer's body is over the client's
    /// [`response_limit`](crate::ClientBuilder::response_limit): its status and
    /// headers are here, its body is not read. The server has answered for
    /// good, so the intent is marked answered (sending it again gets the same
    /// answer).
    #[error("the answer ({status}) has a body over the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The answer's status.
        status: StatusCode,
        /// The answer's headers.
        headers: Box<reqwest::header::HeaderMap>,
        /// The limit, in bytes.
        limit: usize,
        /// The idempotency key the request carried.
        key: String,
        /// Attempts made, the first included.
        attempts: u32,
    },
    /// The request could not be built (a body that failed to serialize, a
    /// bad URL or header); nothing was journaled or sent.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
        /// The error it came from (serde_json's, reqwest's).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A middleware stacked below this library's failed (with an error of
    /// its own, not the transport's).
    #[error("a middleware failed: {source}")]
    Middleware {
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client is misconfigured.
    #[error("client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
        /// The error it came from (building the HTTP client).
        #[source]
        source: Option<reqwest::Error>,
    },
}
