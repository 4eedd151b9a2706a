//! A queue and its dead-letter queue: their names and arguments, and their
//! declaration.

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::BrokerError;

/// A queue and its dead-letter queue, as they are declared.
pub(super) struct Topology {
    pub(super) queue: ShortString,
    pub(super) dead_letter_queue: ShortString,
    delivery_limit: Option<u32>,
}

impl Topology {
    pub(super) fn new(
        queue: &str,
        dead_letter_queue: Option<&str>,
        delivery_limit: Option<u32>,
    ) -> Result<Self, BrokerError> {
        let name = |name: String| {
            ShortString::try_new(name).map_err(|e| BrokerError::new("name the queue", e))
        };
        Ok(Self {
            queue: name(queue.to_owned())?,
            dead_letter_queue: name(
                dead_letter_queue.map_or_else(|| format!("{queue}.dead"), str::to_owned),
            )?,
            delivery_limit,
        })
    }

    /// Declares both queues, durable quorum queues, the dead-letter one
    /// first; does nothing to queues that exist with the same arguments.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(self.dead_letter_queue.clone(), durable, quorum.clone())
            .await
            .map_err(|e| BrokerError::new("declare the dead-letter queue", e))?;
        let mut arguments = quorum;
        arguments.insert("x-dead-letter-exchange".into(), long_string(""));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            long_string(self.dead_letter_queue.as_str()),
        );
        if let Some(limit) = self.delivery_limit {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(limit.into()),
            );
        }
        channel
            .queue_declare(self.queue.clone(), durable, arguments)
            .await
            .map_err(|e| BrokerError::new("declare the queue", e))?;
        Ok(())
    }
}

pub(super) fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}
