//! PostgreSQL's same-transaction mode for a consumer: the handler's writes
//! and the key's record commit together, then the message is acknowledged.

use std::fmt::Display;
use std::sync::Arc;

use idempotent_core::postgres::PostgresStore;
use idempotent_core::{Begun, Done, Error, Fingerprint, IdempotencyKey, StoreError, TxBody};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use tracing::Instrument as _;

use crate::consumer::{Consumer, Failure, Verdict};
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;
use crate::outcome::Outcome;

impl Consumer {
    /// Like [`handle`](Self::handle), in PostgreSQL's same-transaction mode
    /// (feature `postgres`):
    /// the handler's writes, through the connection it is given, commit in
    /// one transaction with the key's record, and the message is
    /// acknowledged after the commit. A crash anywhere before the commit
    /// leaves neither the effect nor the record, and the broker delivers
    /// the message again; after it, the redelivery replays.
    ///
    /// ```no_run
    /// use idempotent_consumer::{Consumer, Delivery};
    /// use idempotent_core::postgres::{PostgresStore, sqlx};
    ///
    /// # async fn run(consumer: Consumer, store: PostgresStore, delivery: impl Delivery) -> Result<(), Box<dyn std::error::Error>> {
    /// consumer
    ///     .handle_in_transaction(delivery, &store, |message, tx| {
    ///         Box::pin(async move {
    ///             sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
    ///                 .bind(message.id.unwrap_or_default())
    ///                 .execute(&mut *tx)
    ///                 .await?;
    ///             Ok::<_, sqlx::Error>(())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn handle_in_transaction<D, T, E, F>(
        &self,
        delivery: D,
        store: &PostgresStore,
        handler: F,
    ) -> Result<Outcome, BrokerError>
    where
        D: Delivery,
        F: for<'c> FnOnce(Message, &'c mut PgConnection) -> TxBody<'c, T, E> + Send,
        T: Serialize + DeserializeOwned + Send,
        E: Display + Send,
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
                let message = delivery.message().clone();
                let result = if self.inner.deduplicate {
                    self.transaction(store, &key, &source, fingerprint, message, &mut handler)
                        .await
                } else {
                    self.without_record(store, &source, message, &mut handler)
                        .await
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

    /// The handler in the transaction that holds the key's record.
    async fn transaction<T, E, F>(
        &self,
        store: &PostgresStore,
        key: &IdempotencyKey,
        source: &str,
        fingerprint: Fingerprint,
        message: Message,
        handler: &mut Option<F>,
    ) -> Result<Done<T>, Failure<E>>
    where
        F: for<'c> FnOnce(Message, &'c mut PgConnection) -> TxBody<'c, T, E>,
        T: Serialize + DeserializeOwned,
    {
        match self.call(key, source, fingerprint).begin(store).await? {
            Begun::Replayed(value) => Ok(Done {
                value,
                replayed: true,
            }),
            Begun::Fresh(mut tx) => {
                // Taken only now: a claim the store could not answer leaves
                // the handler for the next try.
                let Some(body) = handler.take() else {
                    return Err(Failure::Spent);
                };
                let value = self
                    .timed(source, async {
                        body(message, &mut tx).await.map_err(Failure::Handler)
                    })
                    .await;
                tx.finish(value).await
            }
        }
    }

    /// The handler in a transaction of its own, no record (deduplication off).
    async fn without_record<T, E, F>(
        &self,
        store: &PostgresStore,
        source: &str,
        message: Message,
        handler: &mut Option<F>,
    ) -> Result<Done<T>, Failure<E>>
    where
        F: for<'c> FnOnce(Message, &'c mut PgConnection) -> TxBody<'c, T, E>,
    {
        let unavailable = |e| Failure::Engine(Error::StoreUnavailable(StoreError::unavailable(e)));
        let mut tx = store.pool().begin().await.map_err(unavailable)?;
        let Some(body) = handler.take() else {
            return Err(Failure::Spent);
        };
        let value = self
            .timed(source, async {
                body(message, &mut tx).await.map_err(Failure::Handler)
            })
            .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Done {
            value,
            replayed: false,
        })
    }
}
