//! A delivery that only records how it was settled: for a handler's unit
//! tests, and the examples in these docs. The brokers' own deliveries are
//! in the modules `nats`, `amqp` and `redis`, each behind its feature
//! ([listed in the crate's docs](crate)).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// How a [`Recorded`] delivery was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Acknowledged.
    Acked,
    /// Handed back, to come again after the delay.
    Retried(Duration),
    /// Dead-lettered.
    DeadLettered(DeadLetter),
}

/// A delivery of `message` that records how it was settled; its clones
/// share the record, so a test keeps one and hands the other over.
///
/// ```
/// use idempotent_consumer::Message;
/// use idempotent_consumer::testing::{Recorded, Settled};
///
/// let delivery = Recorded::new(Message::new("orders", "order 42"));
/// assert_eq!(delivery.settled(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Recorded {
    message: Message,
    settled: Arc<Mutex<Option<Settled>>>,
}

impl Recorded {
    /// A delivery of `message`, not settled yet.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            settled: Arc::default(),
        }
    }

    /// How it was settled, if it was.
    pub fn settled(&self) -> Option<Settled> {
        self.settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it was acknowledged.
    pub fn acked(&self) -> bool {
        self.settled() == Some(Settled::Acked)
    }

    fn settle(&self, settled: Settled) -> Result<(), BrokerError> {
        let mut slot = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(earlier) = &*slot {
            return Err(BrokerError::new(
                "settle",
                format!("already settled as {earlier:?}"),
            ));
        }
        *slot = Some(settled);
        Ok(())
    }
}

impl Delivery for Recorded {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.settle(Settled::Acked)
    }

    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        self.settle(Settled::Retried(delay))
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        self.settle(Settled::DeadLettered(letter.clone()))
    }
}
