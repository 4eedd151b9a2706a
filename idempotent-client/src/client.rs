//! The client and its builder: what every request of a client shares (the
//! HTTP client, the journal, the retry policy and budget, the bounds on an
//! attempt).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;

use crate::budget::RetryBudget;
use crate::error::ClientError;
use crate::journal::{FileJournal, Intent, Journal};
use crate::request::RequestBuilder;
use crate::retry::RetryPolicy;

/// What the clones of a client share.
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) retry: RetryPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) attempt_timeout: Duration,
    pub(crate) response_limit: usize,
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
    pub(crate) inner: Arc<Inner>,
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
                return Err(ClientError::Config {
                    reason: "set either `journal` or `journal_path`, not both".to_owned(),
                    source: None,
                });
            }
            (None, None) => {
                return Err(ClientError::Config {
                    reason: "no journal: set `journal_path(...)` (durable) or \
                             `journal(MemoryJournal::new())`"
                        .to_owned(),
                    source: None,
                });
            }
        };
        let http = match self.http {
            Some(http) => http,
            None => {
                // reqwest is built with rustls but no provider of its own:
                // use ring (pure Rust and assembly, no C toolchain like
                // aws-lc needs) unless the program installed one already.
                // rustls 0.23.48 deprecates ring's provider for its lack of
                // post-quantum key exchange; a program that wants that
                // installs aws-lc-rs's provider first, and it is kept.
                #[allow(deprecated)]
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .build()
                    .map_err(|e| ClientError::Config {
                        reason: "the HTTP client could not be built".to_owned(),
                        source: Some(e),
                    })?
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
        RequestBuilder::new(self.clone(), method, url.into())
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
