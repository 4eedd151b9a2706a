//! The client and its builder: the [`IdempotencyMiddleware`] on a `reqwest`
//! client, with a request builder of its own.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use reqwest_middleware::ClientWithMiddleware;

use crate::budget::RetryBudget;
use crate::error::ClientError;
use crate::journal::{Intent, Journal};
use crate::middleware::{IdempotencyMiddleware, MiddlewareBuilder};
use crate::request::RequestBuilder;
use crate::retry::RetryPolicy;

/// A retrying HTTP client whose retries reuse one idempotency key per
/// intent, recorded in a journal before the first attempt: an
/// [`IdempotencyMiddleware`] on a `reqwest` client. To stack the
/// middleware with your own, use it directly.
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
    /// The `reqwest` client with the middleware.
    pub(crate) http: ClientWithMiddleware,
    /// The middleware, for its journal.
    pub(crate) middleware: IdempotencyMiddleware,
}

impl std::fmt::Debug for IdempotentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentClient")
            .field("middleware", &self.middleware)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IdempotentClient`]: the [`MiddlewareBuilder`]'s settings,
/// and the `reqwest` client.
#[derive(Debug, Default)]
#[must_use]
pub struct ClientBuilder {
    middleware: MiddlewareBuilder,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// See [`MiddlewareBuilder::journal_path`].
    pub fn journal_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.middleware = self.middleware.journal_path(path);
        self
    }

    /// See [`MiddlewareBuilder::journal`].
    pub fn journal(mut self, journal: impl Journal) -> Self {
        self.middleware = self.middleware.journal(journal);
        self
    }

    /// See [`MiddlewareBuilder::retention`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.middleware = self.middleware.retention(retention);
        self
    }

    /// See [`MiddlewareBuilder::retry`]; [`RequestBuilder::retry`] replaces
    /// it for one request.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.middleware = self.middleware.retry(policy);
        self
    }

    /// See [`MiddlewareBuilder::retry_budget`].
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.middleware = self.middleware.retry_budget(budget);
        self
    }

    /// See [`MiddlewareBuilder::attempt_timeout`].
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.middleware = self.middleware.attempt_timeout(timeout);
        self
    }

    /// See [`MiddlewareBuilder::response_limit`].
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.middleware = self.middleware.response_limit(bytes);
        self
    }

    /// The `reqwest` client to send with (default: [`default_http_client`]).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Builds the client; opens the file journal now.
    pub fn build(self) -> Result<IdempotentClient, ClientError> {
        let middleware = self.middleware.build()?;
        let http = match self.http {
            Some(http) => http,
            None => default_http_client()?,
        };
        Ok(IdempotentClient {
            http: reqwest_middleware::ClientBuilder::new(http)
                .with(middleware.clone())
                .build(),
            middleware,
        })
    }
}

/// A `reqwest` client with reqwest's defaults and TLS ready: the one an
/// [`IdempotentClient`] sends with unless given another, and one to build a
/// middleware stack on.
///
/// The `reqwest` this crate uses has rustls without a crypto provider of its
/// own; this installs aws-lc-rs's (rustls's default, with post-quantum key
/// exchange) as the process default, unless the program installed one
/// already, which is kept.
///
/// ```
/// let http = idempotent_client::default_http_client()?;
/// # Ok::<(), idempotent_client::ClientError>(())
/// ```
pub fn default_http_client() -> Result<reqwest::Client, ClientError> {
    // Fails only if a provider is installed already: that one is kept.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .build()
        .map_err(|e| ClientError::Config {
            reason: "the HTTP client could not be built".to_owned(),
            source: Some(e),
        })
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
        self.middleware.pending().await
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
