//! One attempt: the request built, sent under the attempt's timeout, and its
//! answer classified (a final answer read whole, one that says try again, or
//! none).

use tokio::time::Instant;

use reqwest::{Response, ResponseBuilderExt as _};

use crate::answer::{is_replay, is_retryable_status};
use crate::request::{IDEMPOTENCY_KEY, RequestBuilder};

/// What one attempt came to.
pub(crate) enum Outcome {
    /// A final answer (with a key, read whole): the server's for good.
    Final(Response),
    /// The server's answer that the key was first used with another
    /// request ([`is_key_reused`]), read whole.
    KeyReused(Response),
    /// A final answer whose body is over the client's response limit (its
    /// body not, or not all, read), to the attempt that carried `key`.
    TooLarge {
        /// The answer, without its body.
        response: Response,
        /// The key the attempt carried.
        key: String,
    },
    /// An answer that says try again (408, 409 while a request with the key
    /// is in progress, 425, 429, 500, 502, 503, 504) to a request that may
    /// be sent again.
    TryAgain(Response),
    /// No whole answer: the connection failed, timed out, or broke before
    /// the whole answer arrived, to a request that may be sent again (the
    /// server may have handled it: the key makes a retry safe).
    Lost(reqwest::Error),
    /// An error not worth a retry (a request that may not be sent twice,
    /// or an error other than the transport's).
    Failed(reqwest::Error),
}

/// The request of one attempt, carrying `key` if there is one (without a
/// key, only a method idempotent by itself is sent twice), bounded by the
/// attempt timeout and by the request's `deadline` (its policy's
/// `max_elapsed`), whichever comes first.
pub(crate) fn build(
    request: &RequestBuilder,
    key: Option<&str>,
    deadline: Option<Instant>,
) -> reqwest::RequestBuilder {
    let inner = &request.client.inner;
    let timeout = match deadline {
        Some(deadline) => inner
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now())),
        None => inner.attempt_timeout,
    };
    let mut built = inner
        .http
        .request(request.method.clone(), &request.url)
        .timeout(timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        built = built.header(name, value);
    }
    match key {
        Some(key) => built.header(IDEMPOTENCY_KEY, key),
        None => built,
    }
}

/// Makes attempt number `attempt` of `request`, carrying `key`, to end by
/// `deadline` at the latest; `retryable` when the request may be sent more
/// than once.
pub(crate) async fn run(
    request: &RequestBuilder,
    key: Option<&str>,
    retryable: bool,
    attempt: u32,
    deadline: Option<Instant>,
) -> Outcome {
    let result = build(request, key, deadline).send().await;
    tracing::debug!(
        key,
        intent = request.intent.as_deref(),
        attempt,
        status = result.as_ref().ok().map(|r| r.status().as_u16()),
        "attempt"
    );
    metrics::counter!("idempotent_client_attempts_total").increment(1);
    match result {
        // A replayed answer is the one the server stored for this key: a
        // retry would get it again, whatever its status.
        Ok(response)
            if retryable
                && is_retryable_status(response.status())
                && !is_replay(response.headers()) =>
        {
            Outcome::TryAgain(response)
        }
        // A final answer to a request with a key is read whole before its
        // intent is marked answered: one that breaks or times out half-way
        // is retried, and the server replays it.
        Ok(response) => match key {
            Some(key) => match read_whole(response, request.client.inner.response_limit).await {
                Ok(Whole::Read(whole, body)) if is_key_reused(whole.status(), &body) => {
                    Outcome::KeyReused(whole)
                }
                Ok(Whole::Read(whole, _)) => Outcome::Final(whole),
                Ok(Whole::TooLarge(response)) => Outcome::TooLarge {
                    response,
                    key: key.to_owned(),
                },
                Err(error) => Outcome::Lost(error),
            },
            None => Outcome::Final(response),
        },
        Err(error)
            if retryable && (error.is_connect() || error.is_timeout() || error.is_request()) =>
        {
            Outcome::Lost(error)
        }
        Err(error) => Outcome::Failed(error),
    }
}

/// What [`read_whole`] read.
enum Whole {
    /// The answer, rebuilt around its whole body, and that body.
    Read(Response, bytes::Bytes),
    /// An answer whose body is over the limit (its body not, or not all, read).
    TooLarge(Response),
}

/// The most memory reserved for a body before its bytes arrive, whatever its
/// `Content-Length` says: the buffer grows as they come.
const FIRST_RESERVE: usize = 64 * 1024;

/// Reads an answer's body whole, within the attempt's timeout. The answer
/// is rebuilt around the bytes (status, version, headers, URL and
/// extensions kept), so the caller reads it as any other.
async fn read_whole(mut response: Response, limit: usize) -> Result<Whole, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Ok(Whole::TooLarge(response));
    }
    // At most `limit`, checked above.
    let declared = response.content_length().unwrap_or(0);
    let mut body = Vec::with_capacity(declared.min(FIRST_RESERVE as u64) as usize);
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Whole::TooLarge(response));
        }
        body.extend_from_slice(&chunk);
    }
    let mut whole = http::Response::builder()
        .status(response.status())
        .version(response.version());
    if let Some(extensions) = whole.extensions_mut() {
        *extensions = std::mem::take(response.extensions_mut());
    }
    if let Some(headers) = whole.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    let body = bytes::Bytes::from(body);
    let whole = whole.url(response.url().clone()).body(body.clone());
    Ok(Whole::Read(
        Response::from(whole.expect("the status, version and headers of a response rebuild it")),
        body,
    ))
}

/// The problem type of this library's servers for a key reused with
/// another request (`urn:idempotent:problem:key-reused`).
pub(crate) const KEY_REUSED_PROBLEM: &str = "urn:idempotent:problem:key-reused";

/// Whether a final answer says the key was first used with another
/// request. A `422` alone does not: a server answers `422` for a bad value
/// too (axum's `Json` rejection, say), which is an application error. The
/// rule: a `422` problem document (RFC 9457) whose `type` is this
/// library's ([`KEY_REUSED_PROBLEM`]), or, from a server that is not ours,
/// whose `type` or `title` names the idempotency key, as the IETF draft's
/// examples do ("Idempotency-Key is already used").
pub(crate) fn is_key_reused(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::UNPROCESSABLE_ENTITY {
        return false;
    }
    let Ok(serde_json::Value::Object(problem)) = serde_json::from_slice(body) else {
        return false;
    };
    let field = |name: &str| problem.get(name).and_then(serde_json::Value::as_str);
    if field("type") == Some(KEY_REUSED_PROBLEM) {
        return true;
    }
    [field("type"), field("title")]
        .into_iter()
        .flatten()
        .any(|text| text.to_ascii_lowercase().contains("idempotency"))
}
