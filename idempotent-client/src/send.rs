//! The retry loop: attempts of one request, all with its key, until a final
//! answer, or until the policy's attempts, its `max_elapsed` or the client's
//! budget runs out; and the journal kept in step.

use std::time::{Duration, SystemTime};

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::Next;
use tokio::time::Instant;

use crate::answer::retry_after;
use crate::attempt::{self, Outcome};
use crate::budget::RetryBudget;
use crate::error::ClientError;
use crate::extension::Delivery;
use crate::middleware::Settings;
use crate::retry::{Retries, RetryPolicy};

/// One request through the middleware: what its attempts share.
pub(crate) struct Exchange<'a> {
    /// The middleware's settings.
    pub(crate) settings: &'a Settings,
    /// The request's retry policy.
    pub(crate) policy: &'a RetryPolicy,
    /// The key every attempt carries (set on the request already), if any.
    pub(crate) key: Option<String>,
    /// The intent's name, if the request names one.
    pub(crate) intent: Option<&'a str>,
}

impl Exchange<'_> {
    /// Sends `request` through `next`, retrying what may be retried:
    ///
    /// - a final answer ends it, and marks the intent answered; the
    ///   server's answer that the key was used with another request is
    ///   [`ClientError::KeyReused`] (see `attempt::is_key_reused`: not
    ///   every `422`);
    /// - an answer that says try again (`409` while the first request with
    ///   the key is in progress, `429`, `503`, ...) waits its `Retry-After`,
    ///   or backs off; so does a lost answer (a failed connection, a
    ///   timeout, a cut body);
    /// - a retry starts only within the policy's attempts and
    ///   `max_elapsed`, and if the budget pays for it; otherwise the last
    ///   answer or error is returned, and the intent stays pending, to be
    ///   resumed later.
    ///
    /// Without a key, only a method idempotent by itself is sent twice; a
    /// streaming body, which cannot be sent twice, is sent once.
    pub(crate) async fn run(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let retryable = (self.key.is_some() || request.method().is_idempotent())
            && request.try_clone().is_some();
        let mut schedule = Schedule::start(self.policy, &self.settings.budget, self.intent);
        let mut spare = Some(request);
        let mut attempts = 0;
        loop {
            attempts += 1;
            extensions.insert(self.delivery(attempts));
            // A retryable request is cloned for each attempt; any other
            // is sent once, itself.
            let this = if retryable {
                spare.as_ref().and_then(Request::try_clone)
            } else {
                spare.take()
            };
            let Some(this) = this else {
                return Err(middleware_error(ClientError::InvalidRequest {
                    reason: "the request cannot be sent again".to_owned(),
                    source: None,
                }));
            };
            let deadline = schedule.deadline();
            let outcome = attempt::run(
                self,
                this,
                attempts,
                deadline,
                retryable,
                next.clone(),
                extensions,
            )
            .await;
            let last = match outcome {
                Outcome::Final(response) => return Ok(self.answered(response, attempts).await),
                Outcome::KeyReused(response) => {
                    self.mark_answered().await;
                    return Err(middleware_error(ClientError::KeyReused {
                        key: self.key.clone().unwrap_or_default(),
                        response: Box::new(response),
                    }));
                }
                Outcome::TooLarge(mut response) => {
                    self.mark_answered().await;
                    return Err(middleware_error(ClientError::ResponseTooLarge {
                        status: response.status(),
                        headers: Box::new(std::mem::take(response.headers_mut())),
                        limit: self.settings.response_limit,
                        key: self.key.clone().unwrap_or_default(),
                        attempts,
                    }));
                }
                Outcome::Failed(error) => return Err(error),
                Outcome::TryAgain(response) => Ok(response),
                Outcome::Lost(error) => Err(error),
            };
            match schedule.next_delay(&last) {
                Some(delay) => {
                    metrics::counter!("idempotent_client_retries_total").increment(1);
                    tokio::time::sleep(delay).await;
                }
                // Spent: the intent stays pending, to be resumed later.
                None => return last.map(|response| self.delivered(response, attempts)),
            }
        }
    }

    /// The key and attempts so far.
    fn delivery(&self, attempts: u32) -> Delivery {
        Delivery {
            key: self.key.clone(),
            attempts,
        }
    }

    /// `response`, carrying its [`Delivery`].
    fn delivered(&self, mut response: Response, attempts: u32) -> Response {
        response.extensions_mut().insert(self.delivery(attempts));
        response
    }

    /// A final answer, whatever its status: its intent is marked answered.
    async fn answered(&self, response: Response, attempts: u32) -> Response {
        self.mark_answered().await;
        self.delivered(response, attempts)
    }

    /// Marks the intent answered: the answer is final, the server keeps it.
    async fn mark_answered(&self) {
        if let Some(name) = self.intent {
            // The server has answered: the answer is the caller's, whatever
            // the journal says. An intent not marked answered stays
            // pending, so sending it again reuses its key and gets the
            // server's stored answer, never a second execution.
            if let Err(error) = self.settings.journal.finish(name).await {
                tracing::warn!(
                    intent = name,
                    %error,
                    "the final answer could not be recorded in the journal; the intent stays \
                     pending, and sending it again reuses its key"
                );
            }
        }
    }
}

/// One of this library's errors, as a middleware's.
fn middleware_error(error: ClientError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

/// When the retries of one request start: the policy's delays, bounded by
/// its `max_elapsed` and by the client's budget.
struct Schedule<'a> {
    /// The policy's delays.
    retries: Retries,
    /// The policy's bound on the time from the first attempt to a retry.
    max_elapsed: Option<Duration>,
    /// The policy's cap on a server's `Retry-After`.
    max_retry_after: Duration,
    /// When the first attempt started.
    started: Instant,
    /// The client's retry budget.
    budget: &'a RetryBudget,
    /// The request's intent, for the log.
    intent: Option<&'a str>,
}

impl<'a> Schedule<'a> {
    /// The schedule of a request whose first attempt starts now (which
    /// earns the budget its share).
    fn start(policy: &RetryPolicy, budget: &'a RetryBudget, intent: Option<&'a str>) -> Self {
        budget.deposit();
        Self {
            retries: policy.retries(),
            max_elapsed: policy.max_elapsed(),
            max_retry_after: policy.max_retry_after(),
            started: Instant::now(),
            budget,
            intent,
        }
    }

    /// When the policy's `max_elapsed` ends, if it has one: no attempt runs
    /// past it, and no retry starts after it.
    fn deadline(&self) -> Option<Instant> {
        self.max_elapsed
            .and_then(|max| self.started.checked_add(max))
    }

    /// The delay before retrying after `last` (an answer's `Retry-After`
    /// replaces the drawn delay), if the policy allows another attempt, it
    /// starts within `max_elapsed`, and the budget pays for it.
    fn next_delay(&mut self, last: &reqwest_middleware::Result<Response>) -> Option<Duration> {
        let asked = last.as_ref().ok().and_then(|response| {
            retry_after(response.headers(), SystemTime::now(), self.max_retry_after)
        });
        let delay = self.retries.next_delay(asked)?;
        if self
            .max_elapsed
            .is_some_and(|max| self.started.elapsed().saturating_add(delay) > max)
        {
            return None;
        }
        if !self.budget.try_retry() {
            metrics::counter!("idempotent_client_budget_exhausted_total").increment(1);
            tracing::warn!(intent = self.intent, "retry budget exhausted");
            return None;
        }
        Some(delay)
    }
}
