//! One attempt: the request built, sent under the attempt's timeout, and its
//! answer classified (a final answer read whole, one that says try again, or
//! none).

use reqwest::{Response, ResponseBuilderExt as _};

use crate::answer::{is_replay, is_retryable_status};
use crate::request::{IDEMPOTENCY_KEY, RequestBuilder};

/// What one attempt came to.
pub(crate) enum Outcome {
    /// A final answer (with a key, read whole): the server's for good.
    Final(Response),
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
/// key, only a method idempotent by itself is sent twice).
pub(crate) fn build(request: &RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    let inner = &request.client.inner;
    let mut built = inner
        .http
        .request(request.method.clone(), &request.url)
        .timeout(inner.attempt_timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        built = built.header(name, value);
    }
    match key {
        Some(key) => built.header(IDEMPOTENCY_KEY, key),
        None => built,
    }
}

/// Makes attempt number `attempt` of `request`, carrying `key`; `retryable`
/// when the request may be sent more than once.
pub(crate) async fn run(
    request: &RequestBuilder,
    key: Option<&str>,
    retryable: bool,
    attempt: u32,
) -> Outcome {
    let result = build(request, key).send().await;
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
                Ok(Whole::Read(whole)) => Outcome::Final(whole),
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
    /// The answer, rebuilt around its whole body.
    Read(Response),
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
    let whole = whole.url(response.url().clone()).body(body);
    Ok(Whole::Read(Response::from(whole.expect(
        "the status, version and headers of a response rebuild it",
    ))))
}
