//! How one delivery ended.

use std::time::Duration;

use crate::dead_letter::DeadLetter;

/// How [`Consumer::handle`](crate::Consumer::handle) settled a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler ran, its result was recorded, the message acknowledged.
    Ran,
    /// A duplicate: the key's result was recorded before, so the message was
    /// acknowledged without running the handler.
    Replayed,
    /// Handed back to the broker to be delivered again after `delay`: the
    /// handler failed (and may run again), or a duplicate of it was still
    /// running elsewhere when the wait ran out.
    Retried {
        /// About when it comes back.
        delay: Duration,
    },
    /// Moved to the dead-letter destination, not run (again).
    DeadLettered(DeadLetter),
}

impl Outcome {
    /// The `outcome` label of the metrics: `ran`, `replayed`, `retried`,
    /// `dead_lettered`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ran => "ran",
            Self::Replayed => "replayed",
            Self::Retried { .. } => "retried",
            Self::DeadLettered(_) => "dead_lettered",
        }
    }
}
