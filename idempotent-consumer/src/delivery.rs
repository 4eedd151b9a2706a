//! What a broker adapter gives the consumer: one delivered message, and
//! the ways to settle it.

use std::future::Future;
use std::time::Duration;

use crate::dead_letter::DeadLetter;
use crate::error::BrokerError;
use crate::message::Message;

/// One delivered message, not yet settled, and how to settle it on its
/// broker. The broker modules `nats`, `amqp` and `redis` (each behind its
/// feature, [listed in the crate's docs](crate)) implement it; implement
/// it for another broker and
/// [`Consumer::handle`](crate::Consumer::handle) gives it the same
/// semantics.
///
/// Exactly one of [`ack`](Delivery::ack), [`retry`](Delivery::retry) and
/// [`dead_letter`](Delivery::dead_letter) is called, once, after the
/// handler's result is recorded (or the message is refused).
pub trait Delivery: Send + Sync + Sized {
    /// The message.
    fn message(&self) -> &Message;

    /// Acknowledges the message: the broker does not deliver it again.
    fn ack(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Has the broker deliver the message again after about `delay` (a
    /// negative acknowledgement with a delay where the broker has one).
    fn retry(self, delay: Duration) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Moves the message to the dead-letter destination, with `letter` as
    /// the reason, and acknowledges it.
    fn dead_letter(
        self,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Tells the broker the message is still being worked on, so it does
    /// not deliver it elsewhere meanwhile (JetStream's in-progress
    /// acknowledgement). Called while the store is down and the message
    /// waits for it. Does nothing by default.
    fn in_progress(&self) -> impl Future<Output = Result<(), BrokerError>> + Send {
        std::future::ready(Ok(()))
    }
}
