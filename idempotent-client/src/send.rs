//! The retry loop: attempts of one request, all with its key, until a final
//! answer, or until the policy's attempts, its `max_elapsed` or the client's
//! budget runs out; and the journal kept in step.

use std::time::{Duration, SystemTime};

use reqwest::Response;
use tokio::time::Instant;

use crate::answer::retry_after;
use crate::attempt::{self, Outcome};
use crate::budget::RetryBudget;
use crate::error::ClientError;
use crate::request::RequestBuilder;
use crate::retry::{Retries, RetryPolicy};

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

/// Sends `request` with `key` (journaled already if the request names an
/// intent), retrying what may be retried:
///
/// - a final answer ends it, and marks the intent answered; the server's
///   answer that the key was used with another request is
///   [`ClientError::KeyReused`] (see `attempt::is_key_reused`: not every
///   `422`);
/// - an answer that says try again (`409` while the first request with the
///   key is in progress, `429`, `503`, ...) waits its `Retry-After`, or backs
///   off; so does a lost answer (a failed connection, a timeout, a cut body);
/// - a retry starts only within the policy's attempts and `max_elapsed`, and
///   if the client's budget pays for it; otherwise the last answer or error
///   is returned, and the intent stays pending, to be resumed later.
pub(crate) async fn with_retries(
    request: &RequestBuilder,
    key: Option<String>,
) -> Result<Sent, ClientError> {
    let inner = &request.client.inner;
    let policy = request.retry.as_ref().unwrap_or(&inner.retry);
    // Without a key, only a method that is idempotent by itself may be sent twice.
    let retryable = key.is_some() || request.method.is_idempotent();
    let mut schedule = Schedule::start(policy, &inner.budget, request.intent.as_deref());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let deadline = schedule.deadline();
        let last = match attempt::run(request, key.as_deref(), retryable, attempts, deadline).await
        {
            Outcome::Final(response) => return answered(request, response, key, attempts).await,
            Outcome::KeyReused(response) => {
                mark_answered(request).await;
                return Err(ClientError::KeyReused {
                    key: key.unwrap_or_default(),
                    response: Box::new(response),
                });
            }
            Outcome::TooLarge { response, key } => {
                return too_large(request, response, key, attempts).await;
            }
            Outcome::Failed(source) => return Err(ClientError::Http { attempts, source }),
            Outcome::TryAgain(response) => Ok(response),
            Outcome::Lost(error) => Err(error),
        };
        match schedule.next_delay(&last) {
            Some(delay) => {
                metrics::counter!("idempotent_client_retries_total").increment(1);
                tokio::time::sleep(delay).await;
            }
            // Spent: the intent stays pending, to be resumed later.
            None => {
                return match last {
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
    fn next_delay(&mut self, last: &Result<Response, reqwest::Error>) -> Option<Duration> {
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

/// A final answer, whatever its status: its intent is marked answered.
async fn answered(
    request: &RequestBuilder,
    response: Response,
    key: Option<String>,
    attempts: u32,
) -> Result<Sent, ClientError> {
    mark_answered(request).await;
    Ok(Sent {
        response,
        key,
        attempts,
    })
}

/// A final answer too large to read: answered all the same.
async fn too_large(
    request: &RequestBuilder,
    mut response: Response,
    key: String,
    attempts: u32,
) -> Result<Sent, ClientError> {
    mark_answered(request).await;
    Err(ClientError::ResponseTooLarge {
        status: response.status(),
        headers: Box::new(std::mem::take(response.headers_mut())),
        limit: request.client.inner.response_limit,
        key,
        attempts,
    })
}

/// Marks the intent answered: the answer is final, the server keeps it.
async fn mark_answered(request: &RequestBuilder) {
    if let Some(name) = &request.intent {
        // The server has answered: the answer is the caller's, whatever
        // the journal says. An intent not marked answered stays
        // pending, so sending it again reuses its key and gets the
        // server's stored answer, never a second execution.
        if let Err(error) = request.client.inner.journal.finish(name).await {
            tracing::warn!(
                intent = name.as_str(),
                %error,
                "the final answer could not be recorded in the journal; the intent stays \
                 pending, and sending it again reuses its key"
            );
        }
    }
}
