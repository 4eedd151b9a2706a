//! One attempt: the request built, sent under the attempt's timeout, and its
//! answer classified (a final answer read whole, one that says try again, or
//! none).

use http::Extensions;
use reqwest::{Request, Response, ResponseBuilderExt as _};
use reqwest_middleware::Next;
use tokio::time::Instant;

use crate::answer::{is_replay, is_retryable_status};
use crate::send::Exchange;

/// What one attempt came to.
pub(crate) enum Outcome {
    /// A final answer (with a key, read whole): the server's for good.
    Final(Response),
    /// The server's answer that the key was first used with another
    /// request ([`is_key_reused`]), read whole.
    KeyReused(Response),
    /// A final answer whose body is over the response limit (its body not,
    /// or not all, read).
    TooLarge(Response),
    /// An answer that says try again (408, 409 while a request with the key
    /// is in progress, 425, 429, 500, 502, 503, 504) to a request that may
    /// be sent again.
    TryAgain(Response),
    /// No whole answer: the connection failed, timed out, or broke before
    /// the whole answer arrived, to a request that may be sent again (the
    /// server may have handled it: the key makes a retry safe).
    Lost(reqwest_middleware::Error),
    /// An error not worth a retry (a request that may not be sent twice,
    /// or an error other than the transport's, such as another
    /// middleware's).
    Failed(reqwest_middleware::Error),
}

/// Makes attempt number `attempt` of `exchange` with `request` (which
/// carries its key already) through `next`, bounded by the attempt timeout,
/// by a timeout set on the request, and by the request's `deadline` (its
/// policy's `max_elapsed`), whichever comes first; `retryable` when the
/// request may be sent more than once.
pub(crate) async fn run(
    exchange: &Exchange<'_>,
    mut request: Request,
    attempt: u32,
    deadline: Option<Instant>,
    retryable: bool,
    next: Next<'_>,
    extensions: &mut Extensions,
) -> Outcome {
    let settings = exchange.settings;
    let mut timeout = settings.attempt_timeout;
    if let Some(deadline) = deadline {
        timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
    }
    if let Some(own) = request.timeout() {
        timeout = timeout.min(*own);
    }
    *request.timeout_mut() = Some(timeout);
    let result = next.run(request, extensions).await;
    let key = exchange.key.as_deref();
    tracing::debug!(
        key,
        intent = exchange.intent,
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
        Ok(response) if key.is_some() => {
            match read_whole(response, settings.response_limit).await {
                Ok(Whole::Read(whole, body)) if is_key_reused(whole.status(), &body) => {
                    Outcome::KeyReused(whole)
                }
                Ok(Whole::Read(whole, _)) => Outcome::Final(whole),
                Ok(Whole::TooLarge(response)) => Outcome::TooLarge(response),
                Err(error) => Outcome::Lost(error.into()),
            }
        }
        Ok(response) => Outcome::Final(response),
        Err(reqwest_middleware::Error::Reqwest(error))
            if retryable && (error.is_connect() || error.is_timeout() || error.is_request()) =>
        {
            Outcome::Lost(error.into())
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
