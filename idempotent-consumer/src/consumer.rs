//! The consumer: a message's key, its run through the engine, and the
//! acknowledgement that follows the recorded result.

use std::fmt::{self, Display};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idempotent_core::{Done, Error, Fingerprint, Idempotency, IdempotencyKey, Operation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::key::KeySource;
use crate::message::Message;
use crate::outcome::Outcome;
use crate::telemetry;

/// The longest pause between two tries of the store while it is down.
const MAX_STORE_PAUSE: Duration = Duration::from_secs(2);

/// Runs a handler once per message, whichever broker delivers it and however
/// often: the key comes from the message ([`KeySource`]), scoped by its
/// stream or queue; the payload is the fingerprint; the handler runs
/// through the engine; and the message is acknowledged only once the result
/// is recorded.
///
/// | the message | what happens |
/// |---|---|
/// | new key | the handler runs; `Ok` is recorded, then the message acknowledged |
/// | key recorded, same payload (a redelivery, a republish) | acknowledged, the handler not run ([`Outcome::Replayed`]) |
/// | handler `Err` | the key is released and the message redelivered after a growing delay, up to [`max_attempts`](crate::ConsumerBuilder::max_attempts) deliveries; then dead-lettered |
/// | key recorded with another payload (a poison message) | dead-lettered, never run, logged |
/// | a duplicate running elsewhere | waits for it (up to [`wait`](crate::ConsumerBuilder::wait)), then replays or is redelivered later |
/// | the store down | nothing runs and nothing is acknowledged: the delivery waits for the store and goes on when it is back |
/// | no key, or a malformed one | dead-lettered, never run |
///
/// ```
/// use idempotent_consumer::{Consumer, Message, Outcome, testing::Recorded};
/// use idempotent_core::{Idempotency, memory::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship-order").build();
/// let mut shipped = 0;
/// for _ in 0..2 {
///     // The same message delivered twice (a crash before the ack, say).
///     let delivery = Recorded::new(Message::new("orders", "order 42").with_id("order-42"));
///     let outcome = consumer
///         .handle(delivery.clone(), |_message| async {
///             shipped += 1;
///             Ok::<_, std::io::Error>(())
///         })
///         .await
///         .unwrap();
///     assert!(delivery.acked());
///     println!("{outcome:?}");
/// }
/// assert_eq!(shipped, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Consumer {
    pub(crate) inner: Arc<Settings>,
}

pub(crate) struct Settings {
    pub(crate) runtime: Idempotency,
    pub(crate) operation: Operation,
    pub(crate) key: KeySource,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) max_retry_delay: Duration,
    pub(crate) deduplicate: bool,
    pub(crate) concurrency: usize,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name())
            .field("key", &self.inner.key)
            .field("max_attempts", &self.inner.max_attempts)
            .field("deduplicate", &self.inner.deduplicate)
            .finish_non_exhaustive()
    }
}

/// What a handler's run through the engine came to.
pub(crate) enum Failure<E> {
    Handler(E),
    Engine(Error),
    /// The handler was already taken by an earlier run (not reached).
    Spent,
}

impl<E> From<Error> for Failure<E> {
    fn from(error: Error) -> Self {
        Self::Engine(error)
    }
}

/// What to do with a delivery.
pub(crate) enum Verdict {
    Ack { replayed: bool },
    Retry(Duration),
    DeadLetter(DeadLetter),
}

impl Consumer {
    /// The consumer's name (the operation of its keys).
    pub fn name(&self) -> &'static str {
        self.inner.operation.name()
    }

    /// The runtime it runs on.
    pub fn runtime(&self) -> &Idempotency {
        &self.inner.runtime
    }

    /// Deliveries [`consume`](Self::consume) handles at once.
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    /// Handles one delivery: runs `handler` unless the message's key has a
    /// recorded result, then settles the delivery (see [`Consumer`]).
    ///
    /// The error is the broker's, settling the delivery; the broker then
    /// delivers the message again, and its duplicate replays.
    pub async fn handle<D, T, E, F, Fut>(
        &self,
        delivery: D,
        handler: F,
    ) -> Result<Outcome, BrokerError>
    where
        D: Delivery,
        F: FnOnce(Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Display,
    {
        let span = self.span(delivery.message());
        async move {
            let (key, fingerprint) = match self.key_of(delivery.message()) {
                Ok(found) => found,
                Err(letter) => return self.apply(delivery, Verdict::DeadLetter(letter)).await,
            };
            let source = Arc::clone(&delivery.message().source);
            let mut handler = Some(handler);
            loop {
                // The handler is taken when the engine runs the body, not
                // before: a claim the store could not answer leaves it here
                // for the next try.
                let slot = &mut handler;
                let message = delivery.message().clone();
                let run = self.timed(&source, async move {
                    match slot.take() {
                        Some(body) => body(message).await.map_err(Failure::Handler),
                        None => Err(Failure::Spent),
                    }
                });
                let result = if self.inner.deduplicate {
                    self.call(&key, &source, fingerprint).run(run).await
                } else {
                    run.await.map(|value| Done {
                        value,
                        replayed: false,
                    })
                };
                match self.judge(delivery.message(), &key, result.map(|done| done.replayed)) {
                    Some(verdict) => return self.apply(delivery, verdict).await,
                    None => self.wait_for_store(&delivery, &source).await,
                }
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) fn call<'a>(
        &'a self,
        key: &IdempotencyKey,
        source: &str,
        fingerprint: Fingerprint,
    ) -> idempotent_core::Call<'a> {
        self.inner
            .runtime
            .call(&self.inner.operation)
            .idempotency_key(key.clone())
            .scope(source)
            .fingerprint(fingerprint)
    }

    pub(crate) fn span(&self, message: &Message) -> tracing::Span {
        tracing::info_span!(
            "message",
            stream = %message.source,
            consumer = self.name(),
            id = message.id.as_deref().unwrap_or(""),
            attempt = message.attempt,
        )
    }

    /// The message's key and payload fingerprint, or why it has none.
    pub(crate) fn key_of(
        &self,
        message: &Message,
    ) -> Result<(IdempotencyKey, Fingerprint), DeadLetter> {
        let key = self.inner.key.key_of(message).ok_or(DeadLetter::NoKey)?;
        let key = IdempotencyKey::parse(&key).map_err(|e| DeadLetter::InvalidKey {
            detail: e.to_string(),
        })?;
        Ok((key, Fingerprint::from_bytes(&message.payload)))
    }

    /// Times the handler (the latency histogram), when it runs.
    pub(crate) async fn timed<T, E>(
        &self,
        source: &str,
        run: impl Future<Output = Result<T, Failure<E>>>,
    ) -> Result<T, Failure<E>> {
        let started = std::time::Instant::now();
        let result = run.await;
        if !matches!(result, Err(Failure::Spent)) {
            telemetry::handler_ran(source, self.name(), started.elapsed());
        }
        result
    }

    /// What a run's result means for its delivery; `None` when the store
    /// was down, so the delivery is kept and tried again.
    pub(crate) fn judge<E: Display>(
        &self,
        message: &Message,
        key: &IdempotencyKey,
        result: Result<bool, Failure<E>>,
    ) -> Option<Verdict> {
        let key = key.as_str();
        Some(match result {
            Ok(replayed) => Verdict::Ack { replayed },
            Err(Failure::Handler(error)) => {
                if message.attempt >= self.inner.max_attempts {
                    Verdict::DeadLetter(DeadLetter::Failed {
                        key: key.to_owned(),
                        attempts: message.attempt,
                        error: error.to_string(),
                    })
                } else {
                    tracing::warn!(%error, "the handler failed; the message comes back later");
                    Verdict::Retry(self.retry_delay(message.attempt))
                }
            }
            Err(Failure::Spent) => Verdict::Retry(self.inner.retry_delay),
            Err(Failure::Engine(error)) => match error {
                Error::KeyReused { .. } => Verdict::DeadLetter(DeadLetter::KeyReused {
                    key: key.to_owned(),
                }),
                Error::InvalidKey(error) => Verdict::DeadLetter(DeadLetter::InvalidKey {
                    detail: error.to_string(),
                }),
                Error::Codec { detail, .. } => Verdict::DeadLetter(DeadLetter::Undecodable {
                    key: key.to_owned(),
                    detail,
                }),
                Error::InProgress { retry_after, .. } => {
                    tracing::info!(
                        ?retry_after,
                        "a duplicate is still running elsewhere; the message comes back later"
                    );
                    Verdict::Retry(retry_after)
                }
                Error::StoreUnavailable(_) => return None,
                error => {
                    // The lease was lost (the handler outlived it), or the
                    // runtime is misconfigured: the broker delivers it again.
                    tracing::error!(%error, "the message could not be settled; it comes back later");
                    Verdict::Retry(self.retry_delay(message.attempt))
                }
            },
        })
    }

    /// The delay before the `attempt`-th failed delivery comes back.
    fn retry_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.inner
            .retry_delay
            .saturating_mul(1 << doublings)
            .min(self.inner.max_retry_delay)
    }

    /// Waits a little for the store, keeping the delivery ours meanwhile.
    pub(crate) async fn wait_for_store<D: Delivery>(&self, delivery: &D, source: &str) {
        telemetry::store_waited(source, self.name());
        tracing::warn!(
            "the idempotency store is unavailable; the message waits for it, unacknowledged"
        );
        if let Err(error) = delivery.in_progress().await {
            tracing::warn!(%error, "could not tell the broker the message is in progress");
        }
        tokio::time::sleep(
            MAX_STORE_PAUSE.min(self.inner.retry_delay.max(Duration::from_millis(100))),
        )
        .await;
    }

    /// Settles the delivery as `verdict` says.
    pub(crate) async fn apply<D: Delivery>(
        &self,
        delivery: D,
        verdict: Verdict,
    ) -> Result<Outcome, BrokerError> {
        let source = Arc::clone(&delivery.message().source);
        let outcome = match verdict {
            Verdict::Ack { replayed } => {
                // A result the store could not take yet is stored by the
                // runtime once it is back; until then the message stays
                // unacknowledged, so a crash meanwhile delivers it again.
                while self.inner.runtime.pending_results() > 0 {
                    if let Err(error) = delivery.in_progress().await {
                        tracing::warn!(%error, "could not tell the broker the message is in progress");
                    }
                    let _ =
                        tokio::time::timeout(MAX_STORE_PAUSE, self.inner.runtime.settled()).await;
                }
                delivery.ack().await?;
                if replayed {
                    Outcome::Replayed
                } else {
                    Outcome::Ran
                }
            }
            Verdict::Retry(delay) => {
                delivery.retry(delay).await?;
                Outcome::Retried { delay }
            }
            Verdict::DeadLetter(letter) => {
                tracing::error!(reason = letter.reason(), "{letter}; dead-lettered");
                delivery.dead_letter(&letter).await?;
                Outcome::DeadLettered(letter)
            }
        };
        telemetry::settled(&source, self.name(), &outcome);
        Ok(outcome)
    }
}
