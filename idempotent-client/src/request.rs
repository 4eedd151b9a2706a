//! One request being configured, and what it assembles before its first
//! attempt: its checks, and its intent recorded in the journal with its key.

use reqwest::Method;
use serde::Serialize;

use crate::attempt;
use crate::client::IdempotentClient;
use crate::error::ClientError;
use crate::journal::{Intent, now_ms};
use crate::retry::RetryPolicy;
use crate::send::{self, Sent};

/// The header carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Headers never written to the journal: the standard credentials and the
/// common API-key headers.
const CREDENTIALS: [&str; 7] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
];

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
        attempt::build(&self, Some(self.key.as_deref().unwrap_or("k")), None)
            .build()
            .map_err(|error| ClientError::InvalidRequest {
                reason: "the request cannot be built (its URL, a header or the key)".to_owned(),
                source: Some(Box::new(error)),
            })?;
        let key = match &self.intent {
            Some(name) => Some(self.record(name).await?),
            None => self.key.clone(),
        };
        send::with_retries(&self, key).await
    }

    /// Records the intent `name` for this request, unless the journal has
    /// it already, and returns its key: the journaled one, which must
    /// belong to this request.
    async fn record(&self, name: &str) -> Result<String, ClientError> {
        let recorded = self
            .client
            .inner
            .journal
            .begin(Intent {
                name: name.to_owned(),
                key: self
                    .key
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                method: self.method.to_string(),
                url: without_userinfo(&self.url),
                headers: self
                    .headers
                    .iter()
                    .filter(|(n, _)| !CREDENTIALS.contains(&n.to_ascii_lowercase().as_str()))
                    .cloned()
                    .collect(),
                body: self.body.clone(),
                created_at_ms: now_ms(),
                done: false,
                answered_at_ms: 0,
            })
            .await?;
        if !self.is_request_of(&recorded) {
            return Err(ClientError::IntentReused {
                intent: recorded.name,
                key: recorded.key,
            });
        }
        Ok(recorded.key)
    }

    /// Whether `intent` was journaled for this request: the same method,
    /// path and query, and body, what a server fingerprints (the layer of
    /// `idempotent-core` does). The scheme, host and port may change (a
    /// server moved, `localhost` for `127.0.0.1`), and so may headers (a
    /// trace id, a fresh credential).
    fn is_request_of(&self, intent: &Intent) -> bool {
        intent.method == self.method.as_str()
            && path_and_query(&intent.url) == path_and_query(&self.url)
            && intent.body == self.body
    }
}

/// The path and query of `url`, or `url` itself if it does not parse.
fn path_and_query(url: &str) -> std::borrow::Cow<'_, str> {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()).into(),
            None => parsed.path().to_owned().into(),
        },
        Err(_) => url.into(),
    }
}

/// The URL to journal: a password or user name in it (`https://user:secret@host/`)
/// is a credential, and is left out like the credential headers.
fn without_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Both succeed on a URL that has a host, which one with userinfo has.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.into()
        }
        _ => url.to_owned(),
    }
}

fn is_content_type(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type")
}
