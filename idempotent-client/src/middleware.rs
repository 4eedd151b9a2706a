//! The client's behaviour as a `reqwest_middleware::Middleware`: the key,
//! the journal, the retry policy and budget, the bounds on an attempt, for
//! a stack of middleware the user already has.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderValue};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::budget::RetryBudget;
use crate::error::ClientError;
use crate::extension::IntentName;
use crate::intent;
use crate::journal::{FileJournal, Intent, Journal};
use crate::request::IDEMPOTENCY_KEY;
use crate::retry::RetryPolicy;
use crate::send;

/// What every request through one middleware shares.
pub(crate) struct Settings {
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) retry: RetryPolicy,
    pub(crate) budget: RetryBudget,
    pub(crate) attempt_timeout: Duration,
    pub(crate) response_limit: usize,
}

/// Idempotency keys, a durable journal and safe retries as a
/// [`reqwest_middleware::Middleware`], to stack with your own (tracing,
/// auth, ...).
///
/// - A request whose extensions hold an [`IntentName`] gets the intent's key
///   from the journal, or a new one journaled before the first attempt; a
///   request with an `Idempotency-Key` header keeps it (a key already
///   journaled for its intent wins); any other request has no key, and is
///   retried only if its method is idempotent by itself (GET, PUT, DELETE, ...).
/// - Retries, the budget, `Retry-After`, the attempt timeout (cut to what is
///   left of `max_elapsed`) and the final answer read whole all behave as in
///   [`IdempotentClient`](crate::IdempotentClient), which is this middleware
///   on a `reqwest` client.
/// - The answer carries a [`Delivery`] (its key and attempts) in its
///   extensions. This library's errors ([`ClientError`]: a key reused, an
///   intent reused, an answer too large, a journal that cannot record) are
///   `reqwest_middleware::Error::Middleware`, to `downcast_ref`; a transport
///   error after the last attempt is `reqwest_middleware::Error::Reqwest`,
///   as from `reqwest` itself.
///
/// Put it after the middleware that should see the request once (a span
/// for the whole call) and before those that should see each attempt (a
/// credential refreshed per attempt). Do not stack it with another retrying
/// middleware such as `reqwest-retry`'s: each retry of one would run every
/// retry of the other, and the outer one sends no key.
///
/// ```no_run
/// use idempotent_client::reqwest_middleware::ClientBuilder;
/// use idempotent_client::{IdempotencyMiddleware, IntentName};
///
/// # async fn pay() -> Result<(), Box<dyn std::error::Error>> {
/// let idempotency = IdempotencyMiddleware::builder().journal_path("payments.journal").build()?;
/// let client = ClientBuilder::new(idempotent_client::default_http_client()?)
///     .with(idempotency)
///     .build();
/// let response = client
///     .post("http://127.0.0.1:3000/payments")
///     .json(&serde_json::json!({ "amount": 4200, "currency": "USD" }))
///     .with_extension(IntentName::new("order-42"))
///     .send()
///     .await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    pub(crate) settings: Arc<Settings>,
}

impl std::fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("retry", &self.settings.retry)
            .finish_non_exhaustive()
    }
}

impl IdempotencyMiddleware {
    /// Starts configuring a middleware.
    pub fn builder() -> MiddlewareBuilder {
        MiddlewareBuilder::default()
    }

    /// Intents recorded but never answered for good (the process stopped,
    /// or the retries ran out), oldest first. Sending the same request with
    /// the same [`IntentName`] again sends its journaled key.
    pub async fn pending(&self) -> Result<Vec<Intent>, ClientError> {
        Ok(self.settings.journal.pending().await?)
    }

    /// Sends `request`: its intent journaled, then its attempts.
    async fn send(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let settings = &*self.settings;
        let intent = extensions
            .get::<IntentName>()
            .map(|name| name.as_str().to_owned());
        let key = keyed(settings, &mut request, intent.as_deref())
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let policy = extensions
            .get::<RetryPolicy>()
            .cloned()
            .unwrap_or_else(|| settings.retry.clone());
        let exchange = send::Exchange {
            settings,
            policy: &policy,
            key,
            intent: intent.as_deref(),
        };
        exchange.run(request, extensions, next).await
    }
}

/// Gives `request` its key: the intent's, journaled now if it is new, or
/// the one the caller set, or none.
async fn keyed(
    settings: &Settings,
    request: &mut Request,
    intent: Option<&str>,
) -> Result<Option<String>, ClientError> {
    let chosen = chosen_key(request)?;
    let key = match intent {
        Some(name) => {
            Some(intent::record(&*settings.journal, name, request, chosen.as_deref()).await?)
        }
        None => chosen,
    };
    if let Some(key) = &key {
        let value = HeaderValue::from_str(key).map_err(|error| ClientError::InvalidRequest {
            reason: format!("the key `{key}` is not a valid header value"),
            source: Some(Box::new(error)),
        })?;
        request.headers_mut().insert(IDEMPOTENCY_KEY, value);
    }
    Ok(key)
}

/// The key the caller set as an `Idempotency-Key` header, if any.
fn chosen_key(request: &Request) -> Result<Option<String>, ClientError> {
    request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|error| ClientError::InvalidRequest {
                    reason: "the Idempotency-Key header is not visible ASCII".to_owned(),
                    source: Some(Box::new(error)),
                })
        })
        .transpose()
}

#[async_trait::async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.send(request, extensions, next).await
    }
}

/// Builds an [`IdempotencyMiddleware`].
#[derive(Default)]
#[must_use]
pub struct MiddlewareBuilder {
    journal: Option<Arc<dyn Journal>>,
    journal_path: Option<PathBuf>,
    retention: Option<Duration>,
    retry: Option<RetryPolicy>,
    budget: Option<RetryBudget>,
    attempt_timeout: Option<Duration>,
    response_limit: Option<usize>,
}

impl std::fmt::Debug for MiddlewareBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiddlewareBuilder")
            .field("journal_path", &self.journal_path)
            .finish_non_exhaustive()
    }
}

/// How long answered intents are kept by default: the server's default TTL,
/// 24 hours, counted from the answer. Pending intents are kept until answered.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The largest answer body the client reads by default: 16 MiB.
pub const DEFAULT_RESPONSE_LIMIT: usize = 16 * 1024 * 1024;

/// The bound on one attempt by default: 10 s.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl MiddlewareBuilder {
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

    /// The retry policy of every request (default [`RetryPolicy::default`]);
    /// a [`RetryPolicy`] in a request's extensions replaces it for that request.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The retry budget shared by every request (default [`RetryBudget::default`]).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The bound on each attempt, reading the answer's body included
    /// (default [`DEFAULT_ATTEMPT_TIMEOUT`]); a shorter timeout set on the
    /// request itself wins.
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

    /// Builds the middleware; opens the file journal now.
    pub fn build(self) -> Result<IdempotencyMiddleware, ClientError> {
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
        Ok(IdempotencyMiddleware {
            settings: Arc::new(Settings {
                journal,
                retry: self.retry.unwrap_or_default(),
                budget: self.budget.unwrap_or_default(),
                attempt_timeout: self.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT),
                response_limit: self.response_limit.unwrap_or(DEFAULT_RESPONSE_LIMIT),
            }),
        })
    }
}
