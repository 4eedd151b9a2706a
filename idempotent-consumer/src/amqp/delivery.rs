//! One delivery from a queue, and how it is settled on RabbitMQ.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::DELIVERY_COUNT_HEADER;
use super::properties::{copy, message_of};
use super::subscriber::Shared;
use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// How long a message whose dead letter was not confirmed waits before it
/// is handed back (so a missing dead-letter queue is not a busy loop).
const DEAD_LETTER_PAUSE: Duration = Duration::from_secs(1);
/// A negative acknowledgement that puts the message back in the queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// One delivery from a RabbitMQ queue, for
/// [`Consumer::handle`](crate::Consumer::handle): see [`Delivery`] for how
/// it is settled, and [the module docs](super) for what each does on
/// RabbitMQ.
///
/// Its [`Message`]: the source is the queue's name; the id is the
/// `message_id` property (none when it is missing or empty); the headers
/// are those with a text form (UTF-8 strings, numbers, booleans, in name
/// order: AMQP tables have none of their own), others are left out; the
/// attempt is 1 on a first delivery (whatever `x-delivery-count` header
/// the producer set), then the quorum queue's `x-delivery-count` plus one.
///
/// A delivery dropped unsettled (its handler panicked, its task was
/// aborted) is handed back to the queue at once, as a `basic.nack` with
/// `requeue`, rather than held until its channel closes.
pub struct AmqpDelivery {
    message: Message,
    /// Taken when the delivery is settled.
    acker: Option<lapin::Acker>,
    properties: BasicProperties,
    shared: Arc<Shared>,
    /// The member's channel, kept open while one of its deliveries is
    /// unsettled: a stream dropped to stop consuming (`take_until`) lets its
    /// deliveries in flight settle, and the channel closes after the last.
    _channel: lapin::Channel,
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl AmqpDelivery {
    pub(super) fn new(
        shared: &Arc<Shared>,
        channel: &lapin::Channel,
        delivery: lapin::message::Delivery,
    ) -> Self {
        let lapin::message::Delivery {
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        Self {
            message: message_of(Arc::clone(&shared.source), &properties, data, redelivered),
            acker: Some(acker),
            properties,
            shared: Arc::clone(shared),
            _channel: channel.clone(),
        }
    }

    /// The acker, taken: the delivery is being settled.
    fn take(&mut self) -> Result<lapin::Acker, BrokerError> {
        self.acker
            .take()
            .ok_or_else(|| BrokerError::new("settle", "the delivery was settled before"))
    }

    /// Acknowledges it.
    async fn acknowledge(mut self) -> Result<(), BrokerError> {
        let acker = self.take()?;
        Self::settled("ack", acker.ack(BasicAckOptions::default()).await)
    }

    /// Hands it back to the queue, which counts the delivery.
    async fn hand_back(mut self) -> Result<(), BrokerError> {
        let acker = self.take()?;
        Self::settled("nack", acker.nack(REQUEUE).await)
    }

    /// Settles the delivery with `action`; `false` from lapin means the
    /// channel closed first, so the broker delivers it again.
    fn settled(action: &'static str, done: lapin::Result<bool>) -> Result<(), BrokerError> {
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(BrokerError::new(
                action,
                "the channel closed first; the broker delivers the message again",
            )),
            Err(e) => Err(BrokerError::new(action, e)),
        }
    }
}

impl Delivery for AmqpDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.acknowledge().await
    }

    /// Holds the message for `delay`, then hands it back (`basic.nack` with
    /// `requeue`); the quorum queue counts the delivery.
    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        tokio::time::sleep(delay).await;
        self.hand_back().await
    }

    /// Publishes a copy (the payload, the id, the headers but
    /// `x-delivery-count`) with the reason headers to the dead-letter
    /// queue, waits for the broker's confirm, then acknowledges the
    /// original. A
    /// copy the broker did not confirm hands the original back after a
    /// pause, to be dead-lettered on its next delivery.
    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        // The original's headers but the queue's delivery count, which a
        // consumer of the dead letters would take for its own.
        let mut headers: FieldTable = self
            .properties
            .headers()
            .iter()
            .flat_map(|headers| headers.inner().clone())
            .filter(|(name, _)| name.as_str() != DELIVERY_COUNT_HEADER)
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        headers.insert(
            DeadLetter::REASON_HEADER.into(),
            AMQPValue::LongString(letter.reason().into()),
        );
        headers.insert(
            DeadLetter::DETAIL_HEADER.into(),
            AMQPValue::LongString(letter.to_string().into()),
        );
        let properties = copy(&self.properties).with_headers(headers);
        let published = self
            .shared
            .link
            .publish(
                &self.shared.topology.dead_letter_queue,
                &self.message.payload,
                properties,
            )
            .await;
        if let Err(error) = published {
            tokio::time::sleep(DEAD_LETTER_PAUSE).await;
            if let Err(error) = self.hand_back().await {
                tracing::warn!(%error, "could not hand back a message whose dead letter failed");
            }
            return Err(BrokerError::new("dead-letter", error));
        }
        self.acknowledge().await
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        // Outside a runtime, the channel's closing hands it back.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = acker.nack(REQUEUE).await;
            });
        }
    }
}
