//! The loop every broker shares: deliveries in, handled a few at a time,
//! and a tally of how they were settled.

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;

use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::consumer::Consumer;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;
use crate::outcome::Outcome;

/// How the deliveries of one [`Consumer::consume`] were settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Consumed {
    /// Handlers that ran, and whose messages were acknowledged.
    pub ran: u64,
    /// Duplicates acknowledged without running.
    pub replayed: u64,
    /// Deliveries handed back to come again.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries that could not be received or settled (the broker
    /// delivers them again).
    pub failed: u64,
}

impl Consumed {
    fn add(&mut self, settled: &Result<Outcome, BrokerError>) {
        match settled {
            Ok(Outcome::Ran) => self.ran += 1,
            Ok(Outcome::Replayed) => self.replayed += 1,
            Ok(Outcome::Retried { .. }) => self.retried += 1,
            Ok(Outcome::DeadLettered(_)) => self.dead_lettered += 1,
            Err(error) => {
                tracing::warn!(%error, "a delivery could not be settled; the broker delivers it again");
                self.failed += 1;
            }
        }
    }
}

impl Consumer {
    /// Handles every delivery of `deliveries` with `handler`, up to
    /// [`concurrency`](crate::ConsumerBuilder::concurrency) at once, until
    /// the stream ends; each is settled as [`handle`](Self::handle) says,
    /// and the tally is returned. A delivery the stream could not receive,
    /// or that could not be settled, is logged and counted as `failed`: the
    /// broker delivers it again.
    ///
    /// To stop, end the stream (`StreamExt::take_until` with a shutdown
    /// signal): deliveries in flight are finished and settled first.
    pub async fn consume<S, D, H, Fut, T, E>(&self, deliveries: S, handler: H) -> Consumed
    where
        S: Stream<Item = Result<D, BrokerError>>,
        D: Delivery,
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Display,
    {
        let handler = &handler;
        self.each(deliveries, |delivery| self.handle(delivery, handler))
            .await
    }

    /// [`consume`](Self::consume) in PostgreSQL's same-transaction mode:
    /// each delivery as [`handle_in_transaction`](Self::handle_in_transaction).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn consume_in_transaction<S, D, H, T, E>(
        &self,
        deliveries: S,
        store: &idempotent_core::postgres::PostgresStore,
        handler: H,
    ) -> Consumed
    where
        S: Stream<Item = Result<D, BrokerError>>,
        D: Delivery,
        H: for<'c> Fn(Message, &'c mut sqlx::PgConnection) -> idempotent_core::TxBody<'c, T, E>
            + Sync,
        T: Serialize + DeserializeOwned + Send,
        E: Display + Send,
    {
        let handler = &handler;
        self.each(deliveries, |delivery| {
            self.handle_in_transaction(delivery, store, handler)
        })
        .await
    }

    async fn each<S, D, F, Fut>(&self, deliveries: S, handle: F) -> Consumed
    where
        S: Stream<Item = Result<D, BrokerError>>,
        F: Fn(D) -> Fut,
        Fut: Future<Output = Result<Outcome, BrokerError>>,
    {
        let tally = Mutex::new(Consumed::default());
        let (tally_ref, handle) = (&tally, &handle);
        deliveries
            .for_each_concurrent(self.concurrency(), |delivery| async move {
                let settled = match delivery {
                    Ok(delivery) => handle(delivery).await,
                    Err(error) => Err(error),
                };
                tally_ref
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .add(&settled);
            })
            .await;
        tally
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
