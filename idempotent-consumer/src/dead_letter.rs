//! Why a message was dead-lettered instead of run.

use std::fmt;

/// Why a message went to the dead-letter destination. Adapters put
/// [`reason`](DeadLetter::reason) and the text (`Display`) in the dead
/// letter's headers, [`REASON_HEADER`](DeadLetter::REASON_HEADER)
/// (`Idempotent-Dead-Letter`) and
/// [`DETAIL_HEADER`](DeadLetter::DETAIL_HEADER)
/// (`Idempotent-Dead-Letter-Detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// The message has no key ([`KeySource`](crate::KeySource) found none).
    NoKey,
    /// The key is not a valid idempotency key (empty, too long, not
    /// visible ASCII).
    InvalidKey {
        /// What is wrong with it.
        detail: String,
    },
    /// A poison message: the key was used before with another payload.
    KeyReused {
        /// The key.
        key: String,
    },
    /// The handler failed on every one of the allowed deliveries.
    Failed {
        /// The key.
        key: String,
        /// The deliveries that failed.
        attempts: u32,
        /// The last error, as the handler's error displays.
        error: String,
    },
    /// The recorded result of the key cannot be decoded (written by another
    /// program, or corrupt).
    Undecodable {
        /// The key.
        key: String,
        /// Why it cannot be decoded.
        detail: String,
    },
}

impl DeadLetter {
    /// The dead letter's header (a NATS header, a Redis stream entry's
    /// field) that holds the [`reason`](DeadLetter::reason):
    /// `Idempotent-Dead-Letter`.
    pub const REASON_HEADER: &'static str = "Idempotent-Dead-Letter";

    /// The dead letter's header (a NATS header, a Redis stream entry's
    /// field) that holds the reason as text (the `Display`):
    /// `Idempotent-Dead-Letter-Detail`.
    pub const DETAIL_HEADER: &'static str = "Idempotent-Dead-Letter-Detail";

    /// The reason as a short label: `no-key`, `invalid-key`, `key-reused`,
    /// `failed`, `undecodable` (also the metrics' `reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoKey => "no-key",
            Self::InvalidKey { .. } => "invalid-key",
            Self::KeyReused { .. } => "key-reused",
            Self::Failed { .. } => "failed",
            Self::Undecodable { .. } => "undecodable",
        }
    }

    /// The key, if the message had a valid one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NoKey | Self::InvalidKey { .. } => None,
            Self::KeyReused { key } | Self::Failed { key, .. } | Self::Undecodable { key, .. } => {
                Some(key)
            }
        }
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKey => f.write_str("the message has no idempotency key"),
            Self::InvalidKey { detail } => write!(f, "invalid idempotency key: {detail}"),
            Self::KeyReused { key } => write!(
                f,
                "key `{key}` was used before with another payload (a poison message); not run"
            ),
            Self::Failed {
                key,
                attempts,
                error,
            } => write!(f, "key `{key}` failed on {attempts} deliveries: {error}"),
            Self::Undecodable { key, detail } => {
                write!(
                    f,
                    "the recorded result of key `{key}` cannot be decoded: {detail}"
                )
            }
        }
    }
}
