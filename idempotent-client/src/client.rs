//! The client: every attempt of an intent carries the intent's one key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{Method, Response, ResponseBuilderExt as _, StatusCode};
use serde::Serialize;

use crate::budget::RetryBudget;
use crate::journal::{FileJournal, Intent, Journal, JournalError, now_ms};
use crate::retry::{RetryPolicy, is_retryable_status, retry_after};

/// The header carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header a server following the IETF draft (and `idempotent-core`'s
/// layer) sets on a replayed answer.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

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

/// What can go wrong in [`RequestBuilder::send`].
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
    /// The server answered 422: this key was first used with another
    /// request. A bug in the caller (an intent name reused for a different
    /// payload), never retried.
    #[error("idempotency key `{key}` was already used with a different request")]
    KeyReused {
        /// The key.
        key: String,
        /// The server's answer.
        response: Box<Response>,
    },
    /// The intent was first sent with another request (another method,
    /// path and query, or body), which its key belongs to; nothing was
    /// sent. Sending it would get the server's 422 at best, or a replay of
    /// the other request's answer from a server that does not fingerprint
    /// bodies. A new request needs a new intent name.
    #[error(
        "intent `{intent}` was first sent with another request (method, path, query or body); \
         its key `{key}` belongs to that one: give this request another intent name"
    )]
    IntentChanged {
        /// The intent's name.
        intent: String,
        /// The key journaled for the first request.
        key: String,
    },
    /// The final answer's body is over the client's
    /// [`response_limit`](ClientBuilder::response_limit): its status and
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
    /// The request could not be built (a body that failed to serialize, say).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The client is misconfigured.
    #[error("client configuration: {0}")]
    Config(String),
}

/// A final answer, with the key it was sent with and how many attempts it took.
#[derive(Debug)]
pub struct Sent {
    /// The server's answer (the last attempt's). With a key, a final
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

struct Inner {
    http: reqwest::Client,
    journal: Arc<dyn Journal>,
    retry: RetryPolicy,
    budget: RetryBudget,
    attempt_timeout: Duration,
    response_limit: usize,
}

/// A retrying HTTP client whose retries reuse one idempotency key per
/// intent, recorded in a journal before the first attempt.
///
/// ```no_run
/// use idempotent_client::IdempotentClient;
///
/// # async fn pay() -> Result<(), idempotent_client::ClientError> {
/// let client = IdempotentClient::builder().journal_path("payments.journal").build()?;
/// let sent = client
///     .post("http://127.0.0.1:3000/payments")
///     .json(&serde_json::json!({ "amount": 4200, "currency": "USD" }))
///     .intent("order-42")
///     .send()
///     .await?;
/// println!("{} after {} attempt(s), key {:?}", sent.response.status(), sent.attempts, sent.key);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdempotentClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdempotentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentClient")
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IdempotentClient`].
#[derive(Default)]
#[must_use]
pub struct ClientBuilder {
    journal: Option<Arc<dyn Journal>>,
    journal_path: Option<PathBuf>,
    retention: Option<Duration>,
    retry: Option<RetryPolicy>,
    budget: Option<RetryBudget>,
    attempt_timeout: Option<Duration>,
    response_limit: Option<usize>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("journal_path", &self.journal_path)
            .finish_non_exhaustive()
    }
}

/// How long answered intents are kept by default: the server's default TTL,
/// 24 hours, counted from the answer. Pending intents are kept until answered.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The largest answer body the client reads by default: 16 MiB.
pub const DEFAULT_RESPONSE_LIMIT: usize = 16 * 1024 * 1024;

impl ClientBuilder {
    /// Keeps intents in a [`FileJournal`] at `path` (created if missing).
    pub fn journal_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal_path = Some(path.into());
        self
    }

    /// Keeps intents in `journal` (a [`MemoryJournal`](crate::MemoryJournal) in tests).
    pub fn journal(mut self, journal: impl Journal) -> Self {
        self.journal = Some(Arc::new(journal));
        self
    }

    /// How long a file journal keeps intents after their final answer
    /// (default [`DEFAULT_RETENTION`]); pending ones are kept until answered.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The retry policy of every request (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The retry budget shared by every request of the client (default
    /// [`RetryBudget::default`]).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The bound on each attempt, reading the answer's body included
    /// (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The largest final answer body read for a request with a key, in
    /// bytes (default [`DEFAULT_RESPONSE_LIMIT`]); a larger one is
    /// [`ClientError::ResponseTooLarge`]. A request without a key gets its
    /// answer unread, whatever its size.
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.response_limit = Some(bytes);
        self
    }

    /// The `reqwest` client to send with (default: a new one).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Builds the client; opens the file journal now.
    pub fn build(self) -> Result<IdempotentClient, ClientError> {
        let journal = match (self.journal, self.journal_path) {
            (Some(journal), None) => journal,
            (None, Some(path)) => Arc::new(FileJournal::open(
                path,
                self.retention.unwrap_or(DEFAULT_RETENTION),
            )?),
            (Some(_), Some(_)) => {
                return Err(ClientError::Config(
                    "set either `journal` or `journal_path`, not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err(ClientError::Config(
                    "no journal: set `journal_path(...)` (durable) or `journal(MemoryJournal::new())`"
                        .to_owned(),
                ));
            }
        };
        let http = match self.http {
            Some(http) => http,
            None => {
                // reqwest is built with rustls but no provider of its own:
                // use ring (pure Rust and assembly, no C toolchain like
                // aws-lc needs) unless the program installed one already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .build()
                    .map_err(|e| ClientError::Config(format!("the HTTP client: {e}")))?
            }
        };
        Ok(IdempotentClient {
            inner: Arc::new(Inner {
                http,
                journal,
                retry: self.retry.unwrap_or_default(),
                budget: self.budget.unwrap_or_default(),
                attempt_timeout: self.attempt_timeout.unwrap_or(Duration::from_secs(10)),
                response_limit: self.response_limit.unwrap_or(DEFAULT_RESPONSE_LIMIT),
            }),
        })
    }
}

impl IdempotentClient {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A request with any method.
    pub fn request(&self, method: Method, url: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            invalid: None,
            intent: None,
            key: None,
            retry: None,
        }
    }

    /// A POST.
    pub fn post(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// A PUT.
    pub fn put(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    /// A PATCH.
    pub fn patch(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    /// A DELETE.
    pub fn delete(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// Intents recorded but never answered for good (the process stopped,
    /// or the retries ran out), oldest first.
    pub async fn pending(&self) -> Result<Vec<Intent>, ClientError> {
        Ok(self.inner.journal.pending().await?)
    }

    /// Sends a pending intent again, with its original key, method, URL,
    /// headers and body. Credentials were not kept: add their headers with
    /// [`RequestBuilder::header`], and basic auth that was in the URL's
    /// userinfo as an `Authorization` header.
    pub fn resume(&self, intent: &Intent) -> RequestBuilder {
        let method = Method::from_bytes(intent.method.as_bytes()).unwrap_or(Method::POST);
        let mut request = self.request(method, intent.url.clone());
        request.headers = intent.headers.clone();
        request.body = intent.body.clone();
        request.intent = Some(intent.name.clone());
        // Its own key, even if the journal no longer holds the intent.
        request.key = Some(intent.key.clone());
        request
    }
}

/// One request being configured; [`send`](Self::send) runs it.
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    client: IdempotentClient,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    invalid: Option<String>,
    intent: Option<String>,
    key: Option<String>,
    retry: Option<RetryPolicy>,
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
    /// A JSON body (and `Content-Type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = body;
                self.headers
                    .push(("content-type".to_owned(), "application/json".to_owned()));
            }
            Err(error) => {
                self.invalid = Some(format!("the JSON body failed to serialize: {error}"))
            }
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
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY) {
            // The key, given as a header: one key, sent once.
            return self.key(value);
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
    ///   attempt. An intent journaled before with another request (another
    ///   method, path and query, or body: what the server fingerprints) is
    ///   [`ClientError::IntentChanged`], and nothing is sent.
    /// - With a key, a final answer's body is read whole, up to the
    ///   [`response_limit`](ClientBuilder::response_limit), before the
    ///   intent is marked answered: a body that breaks or times out half-way
    ///   is retried with the same key (the server replays its stored
    ///   answer), so an intent is never marked answered with an answer the
    ///   caller could not read. A request without a key gets its answer
    ///   unread, as from `reqwest`.
    pub async fn send(self) -> Result<Sent, ClientError> {
        if let Some(invalid) = self.invalid {
            return Err(ClientError::InvalidRequest(invalid));
        }
        let inner = &self.client.inner;
        // A request that cannot be built (a bad URL, header or key) is
        // refused before its intent is journaled: journaled, it would stay
        // pending, and fail the same way on every resume.
        self.attempt(self.key.as_deref().unwrap_or("k"))
            .build()
            .map_err(|error| ClientError::InvalidRequest(error.to_string()))?;
        let key = match &self.intent {
            Some(name) => {
                let recorded = inner
                    .journal
                    .begin(Intent {
                        name: name.clone(),
                        key: self
                            .key
                            .clone()
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                        method: self.method.to_string(),
                        url: without_userinfo(&self.url),
                        headers: self
                            .headers
                            .iter()
                            .filter(|(n, _)| {
                                !CREDENTIALS.contains(&n.to_ascii_lowercase().as_str())
                            })
                            .cloned()
                            .collect(),
                        body: self.body.clone(),
                        created_at_ms: now_ms(),
                        done: false,
                        answered_at_ms: 0,
                    })
                    .await?;
                if !self.is_request_of(&recorded) {
                    return Err(ClientError::IntentChanged {
                        intent: recorded.name,
                        key: recorded.key,
                    });
                }
                Some(recorded.key)
            }
            None => self.key.clone(),
        };
        // Without a key, only a method that is idempotent by itself may be sent twice.
        let retryable = key.is_some() || self.method.is_idempotent();
        let policy = self.retry.as_ref().unwrap_or(&inner.retry);
        let mut retries = policy.retries();
        let mut attempts = 0;
        let started = tokio::time::Instant::now();
        inner.budget.deposit();
        // An answer to try again (not the server's stored one, whatever its status).
        let try_again = |response: &Response| {
            retryable && is_retryable_status(response.status()) && !is_replay(response.headers())
        };
        loop {
            attempts += 1;
            let result = match &key {
                Some(key) => self.attempt(key),
                None => self.attempt_without_key(),
            }
            .send()
            .await;
            let status = result.as_ref().ok().map(Response::status);
            tracing::debug!(
                key = key.as_deref(),
                intent = self.intent.as_deref(),
                attempt = attempts,
                status = status.map(|s| s.as_u16()),
                "attempt"
            );
            metrics::counter!("idempotent_client_attempts_total").increment(1);
            // Whether the body of a final answer broke or timed out half-way.
            let mut cut = false;
            let result = match result {
                Ok(response) if !try_again(&response) => match &key {
                    Some(sent_with) => match read_whole(response, inner.response_limit).await {
                        Ok(Whole::Read(whole)) => Ok(whole),
                        Ok(Whole::TooLarge(response)) => {
                            return self.too_large(response, sent_with.clone(), attempts).await;
                        }
                        Err(error) => {
                            cut = true;
                            Err(error)
                        }
                    },
                    None => Ok(response),
                },
                other => other,
            };
            let wait = match &result {
                // A replayed answer is the one the server stored for this
                // key: a retry would get it again, whatever its status.
                Ok(response) if try_again(response) => retry_after(
                    response.headers(),
                    SystemTime::now(),
                    policy.retry_after_cap(),
                ),
                // The connection failed, timed out, or broke before the
                // whole answer arrived (the server may have handled the
                // request: the key makes a retry safe).
                Err(error)
                    if retryable
                        && (cut
                            || error.is_connect()
                            || error.is_timeout()
                            || error.is_request()) =>
                {
                    None
                }
                _ => {
                    return self.finish(result, key, attempts).await;
                }
            };
            let within_deadline = |delay: &Duration| {
                policy
                    .deadline()
                    .is_none_or(|deadline| started.elapsed().saturating_add(*delay) <= deadline)
            };
            let delay = retries
                .next_delay(wait)
                .filter(within_deadline)
                .filter(|_| {
                    let allowed = inner.budget.try_retry();
                    if !allowed {
                        metrics::counter!("idempotent_client_budget_exhausted_total").increment(1);
                        tracing::warn!(intent = self.intent.as_deref(), "retry budget exhausted");
                    }
                    allowed
                });
            match delay {
                Some(delay) => {
                    metrics::counter!("idempotent_client_retries_total").increment(1);
                    tokio::time::sleep(delay).await;
                }
                // Spent (policy or budget): the intent stays pending, to be resumed later.
                None => {
                    return match result {
                        Ok(response) => Ok(Sent {
                            response,
                            key,
                            attempts,
                        }),
                        Err(source) => Err(ClientError::Http { attempts, source }),
                    };
                }
            }
        }
    }

    /// One attempt, carrying `key`.
    fn attempt(&self, key: &str) -> reqwest::RequestBuilder {
        self.attempt_without_key().header(IDEMPOTENCY_KEY, key)
    }

    /// One attempt, without a key (a method idempotent by itself).
    fn attempt_without_key(&self) -> reqwest::RequestBuilder {
        let inner = &self.client.inner;
        let mut request = inner
            .http
            .request(self.method.clone(), &self.url)
            .timeout(inner.attempt_timeout)
            .body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request
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

    /// Marks the intent answered: the answer is final, the server keeps it.
    async fn settle(&self) {
        if let Some(name) = &self.intent {
            // The server has answered: the answer is the caller's, whatever
            // the journal says. An intent not marked answered stays
            // pending, so sending it again reuses its key and gets the
            // server's stored answer, never a second execution.
            if let Err(error) = self.client.inner.journal.finish(name).await {
                tracing::warn!(
                    intent = name.as_str(),
                    %error,
                    "the final answer could not be recorded in the journal; the intent stays \
                     pending, and sending it again reuses its key"
                );
            }
        }
    }

    /// A final answer too large to read: answered all the same.
    async fn too_large(
        &self,
        mut response: Response,
        key: String,
        attempts: u32,
    ) -> Result<Sent, ClientError> {
        self.settle().await;
        Err(ClientError::ResponseTooLarge {
            status: response.status(),
            headers: Box::new(std::mem::take(response.headers_mut())),
            limit: self.client.inner.response_limit,
            key,
            attempts,
        })
    }

    /// A final answer: 422 is an error; anything else settles the intent.
    async fn finish(
        &self,
        result: Result<Response, reqwest::Error>,
        key: Option<String>,
        attempts: u32,
    ) -> Result<Sent, ClientError> {
        let response = result.map_err(|source| ClientError::Http { attempts, source })?;
        self.settle().await;
        if let (StatusCode::UNPROCESSABLE_ENTITY, Some(key)) = (response.status(), &key) {
            return Err(ClientError::KeyReused {
                key: key.clone(),
                response: Box::new(response),
            });
        }
        Ok(Sent {
            response,
            key,
            attempts,
        })
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

/// Whether the server marked the answer as a replay of its stored one
/// (`Idempotent-Replayed: true`).
fn is_replay(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"))
}
