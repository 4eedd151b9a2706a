//! The loop every broker shares: deliveries in, handled a few at a time.

use std::fmt::Display;
use std::future::Future;

use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::consumer::Consumer;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

impl Consumer {
    /// Handles every delivery of `deliveries` with `handler`, up to
    /// [`concurrency`](crate::ConsumerBuilder::concurrency) at once, until
    /// the stream ends; each is settled as [`handle`](Self::handle) says. A
    /// delivery the stream could not receive, or could not settle, is
    /// logged: the broker delivers it again.
    ///
    /// To stop, end the stream (`StreamExt::take_until` with a shutdown
    /// signal): deliveries in flight are finished and settled first.
    pub async fn consume<S, D, H, Fut, T, E>(&self, deliveries: S, handler: H)
    where
        S: Stream<Item = Result<D, BrokerError>>,
        D: Delivery,
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Display,
    {
        let handler = &handler;
        deliveries
            .for_each_concurrent(self.concurrency(), |delivery| async move {
                match delivery {
                    Ok(delivery) => {
                        if let Err(error) = self.handle(delivery, handler).await {
                            tracing::warn!(%error, "a delivery could not be settled; the broker delivers it again");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "a delivery could not be received"),
                }
            })
            .await;
    }
}
