//! An operation: the settings of one idempotent function or route.

use std::time::Duration;

use crate::runtime::Idempotency;
use crate::telemetry;

/// The settings of one idempotent operation (a function, an HTTP route).
///
/// Unset values fall back to the [`Idempotency`] runtime's defaults.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::Operation;
///
/// static CHARGE: Operation = Operation::new("payments::charge")
///     .ttl(Duration::from_secs(24 * 3600))
///     .wait(Duration::from_secs(5));
/// assert_eq!(CHARGE.name(), "payments::charge");
/// ```
#[derive(Debug, Clone)]
pub struct Operation {
    pub(super) name: &'static str,
    pub(super) ttl: Option<Duration>,
    pub(super) lease: Option<Duration>,
    pub(super) wait: Option<Duration>,
    pub(super) error_ttl: Option<Duration>,
    pub(super) metrics: telemetry::Metrics,
}

impl Operation {
    /// An operation named `name`, with the runtime's defaults.
    ///
    /// The name is part of every storage key: keep it stable across
    /// releases, or earlier records stop being found.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            ttl: None,
            lease: None,
            wait: None,
            error_ttl: None,
            metrics: telemetry::Metrics::new(),
        }
    }

    /// How long a completed record is kept; at most
    /// [`MAX_DURATION`](crate::record::MAX_DURATION) (a century).
    #[must_use]
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long the lease of a running call lasts before renewal; at least
    /// [`MIN_LEASE`](crate::MIN_LEASE) (50 ms), and at most
    /// [`MAX_DURATION`](crate::record::MAX_DURATION) (a century).
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Wait up to `wait` for a duplicate in progress to finish, then replay its
    /// response (or run, if it failed), instead of failing at once with
    /// [`Error::InProgress`](crate::Error::InProgress).
    #[must_use]
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// How long a stored error is kept, by the calls that store errors
    /// ([`Call::run_caching_errors`](crate::Call::run_caching_errors), or
    /// `#[idempotent(cache_errors = "5m")]`); without it, the TTL. It does
    /// not make [`Call::run`](crate::Call::run) store errors: which calls do
    /// is the caller's choice, because only they know that the error type
    /// can be stored (`E: Serialize`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::Operation;
    ///
    /// static CHARGE: Operation = Operation::new("charge").error_ttl(Duration::from_secs(300));
    /// # let _ = &CHARGE;
    /// ```
    #[must_use]
    pub const fn error_ttl(mut self, ttl: Duration) -> Self {
        self.error_ttl = Some(ttl);
        self
    }

    /// The operation's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// How long a duplicate in progress is waited for, if at all.
    pub(crate) fn wait_bound(&self) -> Option<Duration> {
        self.wait
    }

    pub(crate) fn metrics(&self) -> &telemetry::Handles {
        self.metrics.get(self.name)
    }

    /// The retention of a stored response: the operation's, else the runtime's.
    pub(crate) fn ttl_on(&self, runtime: &Idempotency) -> Duration {
        self.ttl.unwrap_or(runtime.ttl())
    }
}
