//! One delivery and how it is settled on JetStream.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::dead_letter_to;
use super::headers::{dead_letter_headers, message_of};
use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// One JetStream delivery, for [`Consumer::handle`](crate::Consumer::handle).
///
/// | [`Delivery`] | JetStream |
/// |---|---|
/// | [`ack`](Delivery::ack) | `+ACK` |
/// | [`retry`](Delivery::retry)`(delay)` | `-NAK` with the delay |
/// | [`dead_letter`](Delivery::dead_letter) | a publish to the dead-letter subject, then `+TERM` |
/// | [`in_progress`](Delivery::in_progress) | `+WPI`: `ack_wait` starts again |
pub struct NatsDelivery {
    message: Message,
    delivery: jetstream::Message,
    dead_letter_subject: Arc<str>,
}

impl fmt::Debug for NatsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDelivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl NatsDelivery {
    /// `delivery` from the stream `source`, dead-lettered to
    /// `dead_letter_subject`.
    pub(super) fn new(
        source: Arc<str>,
        dead_letter_subject: Arc<str>,
        delivery: jetstream::Message,
    ) -> Self {
        let attempt = match delivery.info() {
            Ok(info) => u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            Err(error) => {
                tracing::warn!(%error, "a delivery without JetStream's delivery count; taken as the first");
                1
            }
        };
        let message = message_of(source, delivery.headers.as_ref(), delivery.payload.clone())
            .with_attempt(attempt);
        Self {
            message,
            delivery,
            dead_letter_subject,
        }
    }

    /// Sends `kind`, then flushes the connection: the acknowledgement has
    /// reached the server when this returns, so a consumer that stops
    /// right after (its stream ended at a shutdown) loses none, and the
    /// ack's error, if any, is this call's.
    async fn settle(&self, action: &'static str, kind: AckKind) -> Result<(), BrokerError> {
        self.delivery
            .ack_with(kind)
            .await
            .map_err(|e| BrokerError::new(action, e))?;
        self.delivery
            .context
            .client()
            .flush()
            .await
            .map_err(|e| BrokerError::new(action, e))
    }
}

impl Delivery for NatsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.settle("ack", AckKind::Ack).await
    }

    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        self.settle("nak", AckKind::Nak(Some(delay))).await
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let headers = dead_letter_headers(
            self.delivery.headers.as_ref(),
            letter.reason(),
            letter.to_string(),
        );
        let payload = self.delivery.payload.clone();
        dead_letter_to(
            &self.delivery.context,
            &self.dead_letter_subject,
            headers,
            payload,
        )
        .await?;
        self.settle("term", AckKind::Term).await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.settle("in progress", AckKind::Progress).await
    }
}
