//! How often to retry, and how long to wait before each retry.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How a request is retried: exponential backoff with full jitter, bounded
/// by a number of attempts and by the time elapsed since the first one.
/// Built with [`RetryPolicy::builder`]; each setting reads back through the
/// getter of the same name.
///
/// The delay before retry `n` (1-based) is drawn uniformly from
/// `[0, min(max_interval, initial_interval * multiplier^(n-1))]` ("full
/// jitter", which spreads a crowd of clients out instead of keeping them in
/// step). A server's `Retry-After` replaces the drawn delay, capped at
/// [`max_retry_after`](Self::max_retry_after). Retries stop after
/// [`max_attempts`](Self::max_attempts) attempts in all, or when the next
/// one would start more than [`max_elapsed`](Self::max_elapsed) after the
/// first (the [`Retries`] iterator alone can only count its delays; the
/// client also counts the attempts' own time).
///
/// Implemented on the `backon` crate (the `backoff` crate is unmaintained,
/// RUSTSEC-2025-0012); backon's own jitter only adds to the delay, so the
/// full jitter is applied here.
///
/// ```
/// use std::time::Duration;
/// use idempotent_client::RetryPolicy;
///
/// let policy = RetryPolicy::builder()
///     .initial_interval(Duration::from_millis(50))
///     .max_attempts(5)
///     .build();
/// assert_eq!(policy.max_attempts(), 5);
/// let delays: Vec<Duration> = policy.retries().collect();
/// assert_eq!(delays.len(), 4, "five attempts: the first and four retries");
/// assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    initial_interval: Duration,
    multiplier: f32,
    max_interval: Duration,
    full_jitter: bool,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    max_retry_after: Duration,
    jitter_seed: Option<u64>,
}

impl Default for RetryPolicy {
    /// 100 ms initial interval, ×2 per retry, at most 10 s between attempts,
    /// full jitter, 8 attempts, no retry starting more than 60 s after the
    /// first attempt, `Retry-After` capped at 30 s.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RetryPolicy {
    /// Starts configuring a policy, from the defaults (see
    /// [`RetryPolicy::default`]).
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: Self {
                initial_interval: Duration::from_millis(100),
                multiplier: 2.0,
                max_interval: Duration::from_secs(10),
                full_jitter: true,
                max_attempts: 8,
                max_elapsed: Some(Duration::from_secs(60)),
                max_retry_after: Duration::from_secs(30),
                jitter_seed: None,
            },
        }
    }

    /// Never retry: one attempt.
    ///
    /// ```
    /// use idempotent_client::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::none().max_attempts(), 1);
    /// assert_eq!(RetryPolicy::none().retries().count(), 0);
    /// ```
    pub fn none() -> Self {
        Self::builder().max_attempts(1).build()
    }

    /// The ceiling of the first retry's delay.
    pub fn initial_interval(&self) -> Duration {
        self.initial_interval
    }

    /// How much the ceiling grows per retry (at least 1).
    pub fn multiplier(&self) -> f32 {
        self.multiplier
    }

    /// The largest delay between two attempts.
    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }

    /// Whether delays are drawn from `[0, ceiling]` or are the ceiling itself.
    pub fn full_jitter(&self) -> bool {
        self.full_jitter
    }

    /// How many attempts in all, the first included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The overall deadline, from when the first attempt started: no retry
    /// starts after it, and an attempt still running is cut at it (`None`:
    /// no bound).
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The seed of the jitter, if one was given.
    pub fn jitter_seed(&self) -> Option<u64> {
        self.jitter_seed
    }

    /// The delays before each retry, in order; as many as the policy allows
    /// retries, fewer if [`max_elapsed`](Self::max_elapsed) runs out first
    /// (counting only the delays).
    pub fn retries(&self) -> Retries {
        let ceilings = ExponentialBuilder::new()
            // backon caps every delay at `max_delay` but the first, which is
            // `min_delay` as given: capped here, as the policy promises.
            .with_min_delay(self.initial_interval.min(self.max_interval))
            .with_factor(self.multiplier)
            .with_max_delay(self.max_interval)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build();
        Retries {
            ceilings,
            rng: self
                .jitter_seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            full_jitter: self.full_jitter,
            max_elapsed: self.max_elapsed,
            slept: Duration::ZERO,
        }
    }
}

/// Configures a [`RetryPolicy`]; from [`RetryPolicy::builder`]. Each
/// setting has a getter of the same name on the policy.
///
/// ```
/// use std::time::Duration;
/// use idempotent_client::RetryPolicy;
///
/// let policy = RetryPolicy::builder()
///     .max_elapsed(Some(Duration::from_secs(5)))
///     .max_retry_after(Duration::from_secs(2))
///     .build();
/// assert_eq!(policy.max_elapsed(), Some(Duration::from_secs(5)));
/// assert_eq!(policy.max_retry_after(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// The ceiling of the first retry's delay (default 100 ms).
    pub fn initial_interval(mut self, interval: Duration) -> Self {
        self.policy.initial_interval = interval;
        self
    }

    /// How much the ceiling grows per retry (default 2; see
    /// [`build`](Self::build) for the values refused).
    pub fn multiplier(mut self, multiplier: f32) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// The largest delay between two attempts (default 10 s).
    pub fn max_interval(mut self, interval: Duration) -> Self {
        self.policy.max_interval = interval;
        self
    }

    /// Whether delays are drawn from `[0, ceiling]` (the default) or are
    /// the ceiling itself.
    pub fn full_jitter(mut self, enabled: bool) -> Self {
        self.policy.full_jitter = enabled;
        self
    }

    /// How many attempts in all, the first included (default 8; see
    /// [`build`](Self::build) for 0).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// The overall deadline, from when the first attempt started, counting
    /// both the attempts and the delays: no retry starts after it, and an
    /// attempt still running is cut at it (default 60 s; `None`: no bound).
    pub fn max_elapsed(mut self, elapsed: Option<Duration>) -> Self {
        self.policy.max_elapsed = elapsed;
        self
    }

    /// The longest `Retry-After` honoured; longer ones are cut to this
    /// (default 30 s).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.policy.max_retry_after = cap;
        self
    }

    /// Seeds the jitter, so tests and demos repeat (default: unseeded).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.policy.jitter_seed = Some(seed);
        self
    }

    /// The policy. Checked here, and clamped rather than refused: a
    /// multiplier below 1 or not finite counts as 1 (delays that do not
    /// grow), and 0 attempts as 1.
    ///
    /// ```
    /// use idempotent_client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().multiplier(0.5).max_attempts(0).build();
    /// assert_eq!(policy.multiplier(), 1.0);
    /// assert_eq!(policy.max_attempts(), 1);
    /// ```
    pub fn build(self) -> RetryPolicy {
        let multiplier = self.policy.multiplier;
        RetryPolicy {
            multiplier: if multiplier.is_finite() {
                multiplier.max(1.0)
            } else {
                1.0
            },
            max_attempts: self.policy.max_attempts.max(1),
            ..self.policy
        }
    }
}

/// The delays before successive retries (see [`RetryPolicy::retries`]).
#[derive(Debug)]
pub struct Retries {
    ceilings: <ExponentialBuilder as BackoffBuilder>::Backoff,
    rng: fastrand::Rng,
    full_jitter: bool,
    max_elapsed: Option<Duration>,
    slept: Duration,
}

impl Retries {
    /// The delay before the next retry, or `None` when the policy is spent.
    /// A server's `Retry-After` (already capped) replaces the drawn delay.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let ceiling = self.ceilings.next()?;
        let drawn = if self.full_jitter {
            ceiling.mul_f64(self.rng.f64())
        } else {
            ceiling
        };
        let delay = retry_after.unwrap_or(drawn);
        if let Some(max_elapsed) = self.max_elapsed
            && self.slept.saturating_add(delay) > max_elapsed
        {
            return None;
        }
        self.slept = self.slept.saturating_add(delay);
        Some(delay)
    }
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_delay(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicyBuilder {
        RetryPolicy::builder()
            .initial_interval(Duration::from_millis(100))
            .multiplier(2.0)
            .max_interval(Duration::from_millis(1000))
            .max_attempts(7)
            .max_elapsed(None)
            .jitter_seed(7)
    }

    #[test]
    fn ceilings_grow_by_the_multiplier_up_to_the_maximum() {
        let delays: Vec<_> = policy().full_jitter(false).build().retries().collect();
        let ms: Vec<_> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_draws_below_each_ceiling_and_repeats_with_a_seed() {
        let ceilings: Vec<_> = policy().full_jitter(false).build().retries().collect();
        let drawn: Vec<_> = policy().build().retries().collect();
        assert_eq!(
            drawn,
            policy().build().retries().collect::<Vec<_>>(),
            "seeded: the same draws"
        );
        assert_eq!(drawn.len(), ceilings.len());
        assert!(drawn.iter().zip(&ceilings).all(|(d, c)| d <= c));
        assert_ne!(drawn, ceilings, "jitter changes the delays");
    }

    #[test]
    fn attempts_and_elapsed_time_bound_the_retries() {
        assert_eq!(RetryPolicy::none().retries().count(), 0);
        assert_eq!(policy().max_attempts(3).build().retries().count(), 2);
        let bounded = policy()
            .full_jitter(false)
            .max_elapsed(Some(Duration::from_millis(750)))
            .build();
        let ms: Vec<_> = bounded.retries().map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400],
            "a fourth retry would start after 1.5 s"
        );
    }

    #[test]
    fn huge_retry_after_values_do_not_overflow() {
        let mut retries = policy().max_elapsed(Some(Duration::MAX)).build().retries();
        assert_eq!(
            retries.next_delay(Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retries.next_delay(Some(Duration::MAX)),
            Some(Duration::MAX),
            "the time slept saturates instead of overflowing"
        );
    }

    #[test]
    fn the_first_delay_is_capped_too() {
        let capped = policy()
            .initial_interval(Duration::from_secs(5))
            .max_interval(Duration::from_secs(1))
            .full_jitter(false)
            .build();
        assert!(capped.retries().all(|d| d == Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_replaces_the_drawn_delay() {
        let mut retries = policy().build().retries();
        assert_eq!(
            retries.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
    }
}
