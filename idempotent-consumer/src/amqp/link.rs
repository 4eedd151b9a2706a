//! A connection that connects again when it closed, and its channel with
//! publisher confirms: a publish that waits for the broker's confirm.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::error::BrokerError;

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unconfirmed {
    #[error("no queue took the message (does the queue exist?)")]
    Unroutable,
    #[error("the broker refused the message (negative confirm)")]
    Refused,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Channel(#[from] BrokerError),
}

/// A connection, connected again when it closed, and a channel on it with
/// publisher confirms, opened again when it closed.
pub(super) struct Link {
    /// Where to connect (it may hold a password: never printed).
    uri: AMQPUri,
    linked: tokio::sync::Mutex<Linked>,
}

struct Linked {
    connection: Connection,
    confirms: Option<Channel>,
}

impl Link {
    /// Connects to `url`, with `heartbeat` if given.
    pub(super) async fn connect(
        url: &str,
        heartbeat: Option<Duration>,
    ) -> Result<Self, BrokerError> {
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e: String| BrokerError::new("parse the AMQP url", e))?;
        if let Some(interval) = heartbeat {
            let seconds = u16::try_from(interval.as_secs().max(1)).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(seconds);
        }
        let connection = connect(&uri).await?;
        Ok(Self {
            uri,
            linked: tokio::sync::Mutex::new(Linked {
                connection,
                confirms: None,
            }),
        })
    }

    /// The connection, connected again if it closed.
    async fn linked(&self) -> Result<tokio::sync::MutexGuard<'_, Linked>, BrokerError> {
        let mut linked = self.linked.lock().await;
        if !linked.connection.status().connected() {
            linked.connection = connect(&self.uri).await?;
            linked.confirms = None;
        }
        Ok(linked)
    }

    /// A new channel.
    pub(super) async fn open(&self) -> Result<Channel, BrokerError> {
        self.linked()
            .await?
            .connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::new("open a channel", e))
    }

    /// The channel with publisher confirms, opened again if it closed.
    async fn confirms(&self) -> Result<Channel, BrokerError> {
        let mut linked = self.linked().await?;
        if let Some(channel) = &linked.confirms
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = linked
            .connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::new("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BrokerError::new("turn publisher confirms on", e))?;
        linked.confirms = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes to `queue` through the default exchange, mandatory (so a
    /// missing queue is an error, not a silent drop), and waits for the
    /// broker's confirm.
    pub(super) async fn publish(
        &self,
        queue: &ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Unconfirmed> {
        let channel = self.confirms().await?;
        let confirmation = channel
            .basic_publish(
                ShortString::default(),
                queue.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Unconfirmed::Unroutable),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Unconfirmed::Refused),
        }
    }
}

async fn connect(uri: &AMQPUri) -> Result<Connection, BrokerError> {
    Connection::connect_uri(uri.clone(), ConnectionProperties::default())
        .await
        .map_err(|e| BrokerError::new("connect", e))
}
