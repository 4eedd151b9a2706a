//! One request of an [`IdempotentClient`] being configured, sent through
//! its middleware, and what it comes to.

use http::Extensions;
use reqwest::{Method, Response};
use serde::Serialize;

use crate::answer::{is_replay, is_retryable_status};
use crate::client::IdempotentClient;
use crate::error::ClientError;
use crate::extension::{Delivery, IntentName};
use crate::retry::RetryPolicy;

/// The header carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A final answer, with the key it was sent with and how many attempts it took.
#[derive(Debug)]
#[non_exhaustive]
pub struct Sent {
    /// The server's answer (the last attempt's). A `4xx` that refuses the
    /// request is [`ClientError::Rejected`] instead; one that says try
    /// again (`409`, `429`) is here when the retries ran out. With a key, a final
    /// answer's body has been read whole already (see
    /// [`RequestBuilder::send`]), so reading it cannot fail half-way; the
    /// answer returned when the retries run out on a retryable status is
    /// not read.
    pub response: Response,
    /// The idempotency key every attempt carried, if any.
    pub key: Option<String>,
    /// Attempts made, the first included.
    pub attempts: u32,
}

/// One request being configured; [`send`](Self::send) runs it.
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    pub(crate) client: IdempotentClient,
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Why the request cannot be sent, found while it was assembled.
    invalid: Option<serde_json::Error>,
    pub(crate) intent: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) retry: Option<RetryPolicy>,
}

impl std::fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("intent", &self.intent)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder {
    /// A request for `client` with nothing set but its method and URL.
    pub(crate) fn new(client: IdempotentClient, method: Method, url: String) -> Self {
        Self {
            client,
            method,
            url,
            headers: Vec::new(),
            body: Vec::new(),
            invalid: None,
            intent: None,
            key: None,
            retry: None,
        }
    }

    /// A JSON body, with `Content-Type: application/json` unless the
    /// request has a `Content-Type` already (as reqwest's `json` does: one
    /// `Content-Type` is sent, never two).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = body;
                if !self.headers.iter().any(|(name, _)| is_content_type(name)) {
                    self.headers
                        .push(("content-type".to_owned(), "application/json".to_owned()));
                }
            }
            Err(error) => self.invalid = Some(error),
        }
        self
    }

    /// A body of bytes. Bodies are buffered, so every retry sends the same
    /// bytes; there is no streaming body, which could not be replayed.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A header, sent with every attempt (credentials are never journaled).
    /// An `Idempotency-Key` header sets the key, as [`key`](Self::key) does,
    /// so that one key is sent, once.
    ///
    /// A `Content-Type` replaces the one a body set before it
    /// ([`json`](Self::json)): a request has one.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY) {
            // The key, given as a header: one key, sent once.
            return self.key(value);
        }
        if is_content_type(&name) {
            self.headers.retain(|(name, _)| !is_content_type(name));
        }
        self.headers.push((name, value));
        self
    }

    /// Names the intent: its key is taken from the journal, or made and
    /// recorded there before the first attempt.
    pub fn intent(mut self, name: impl Into<String>) -> Self {
        self.intent = Some(name.into());
        self
    }

    /// An explicit key (not journaled unless an intent is named too, in
    /// which case a key already journaled for the intent wins).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// This request's retry policy instead of the client's.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sends, retrying transient failures with the same key; see the crate docs.
    ///
    /// - A named intent is journaled, with its key, before the first
    ///   attempt. An intent journaled before with a different request
    ///   (another method, path and query, or body: what the server
    ///   fingerprints) is [`ClientError::IntentReused`], and nothing is sent.
    /// - With a key, a final answer's body is read whole, up to the
    ///   [`response_limit`](crate::ClientBuilder::response_limit), before the
    ///   intent is marked answered: a body that breaks or times out half-way
    ///   is retried with the same key (the server replays its stored
    ///   answer), so an intent is never marked answered with an answer the
    ///   caller could not read. A request without a key gets its answer
    ///   unread, as from `reqwest`.
    pub async fn send(self) -> Result<Sent, ClientError> {
        if let Some(invalid) = self.invalid {
            return Err(ClientError::InvalidRequest {
                reason: "the JSON body failed to serialize".to_owned(),
                source: Some(Box::new(invalid)),
            });
        }
        // A request that cannot be built (a bad URL, header or key) is
        // refused before its intent is journaled: journaled, it would stay
        // pending, and fail the same way on every resume.
        let mut built = self
            .client
            .http
            .as_ref()
            .request(self.method, &self.url)
            .body(self.body);
        for (name, value) in &self.headers {
            built = built.header(name, value);
        }
        if let Some(key) = &self.key {
            built = built.header(IDEMPOTENCY_KEY, key);
        }
        let request = built.build().map_err(|error| ClientError::InvalidRequest {
            reason: "the request cannot be built (its URL, a header or the key)".to_owned(),
            source: Some(Box::new(error)),
        })?;
        let mut extensions = Extensions::new();
        if let Some(name) = self.intent {
            extensions.insert(IntentName::new(name));
        }
        if let Some(policy) = self.retry {
            extensions.insert(policy);
        }
        let result = self
            .client
            .http
            .execute_with_extensions(request, &mut extensions)
            .await;
        let Delivery { key, attempts } = extensions.remove().unwrap_or(Delivery {
            key: None,
            attempts: 0,
        });
        match result {
            Ok(response) if is_refusal(&response) => Err(rejected(response, key, attempts).await),
            Ok(response) => Ok(Sent {
                response,
                key,
                attempts,
            }),
            Err(reqwest_middleware::Error::Reqwest(source)) => {
                Err(ClientError::Http { attempts, source })
            }
            Err(reqwest_middleware::Error::Middleware(error)) => Err(error
                .downcast::<ClientError>()
                .unwrap_or_else(|other| ClientError::Middleware {
                    source: other.into(),
                })),
        }
    }
}

/// Whether `response` is a `4xx` that refuses the request for good: not
/// one that says try again (`409`, `429`, ... when the retries ran out),
/// unless it is the replay of the server's stored answer, which is final.
fn is_refusal(response: &Response) -> bool {
    let status = response.status();
    status.is_client_error() && (!is_retryable_status(status) || is_replay(response.headers()))
}

/// A final `4xx` answer as [`ClientError::Rejected`], its body read (with a
/// key, it was read whole already).
async fn rejected(mut response: Response, key: Option<String>, attempts: u32) -> ClientError {
    let status = response.status();
    let headers = Box::new(std::mem::take(response.headers_mut()));
    match response.bytes().await {
        Ok(body) => ClientError::Rejected {
            status,
            headers,
            body,
            key,
            attempts,
        },
        Err(source) => ClientError::Http { attempts, source },
    }
}

fn is_content_type(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
}
