//! What a broker call can fail with.

/// A broker call failed: connecting, receiving, acknowledging, publishing.
///
/// A message whose acknowledgement failed is delivered again; the consumer
/// then replays its recorded result instead of running it twice.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct BrokerError {
    action: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl BrokerError {
    /// `action` (what was being done, such as `"ack"`) failed with `source`.
    pub fn new(
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            action,
            source: source.into(),
        }
    }

    /// What was being done.
    pub fn action(&self) -> &'static str {
        self.action
    }
}
