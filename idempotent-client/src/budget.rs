//! The client-wide retry budget: a token bucket, so an outage does not turn
//! into a retry storm.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Retries are paid from a bucket of tokens shared by every request of a
/// client: each retry takes one; each request puts back
/// [`per_request`](RetryBudgetBuilder::per_request) as its first attempt
/// starts (so retries stay within about that share of the traffic), and
/// time adds [`per_second`](RetryBudgetBuilder::per_second), so a quiet
/// client can still retry. When the bucket is empty, requests stop retrying
/// and return their last answer (their intents stay pending, to be resumed
/// later).
///
/// ```
/// use idempotent_client::RetryBudget;
///
/// let budget = RetryBudget::builder()
///     .capacity(2)
///     .per_request(0.0)
///     .per_second(0.0)
///     .build();
/// assert!(budget.try_retry());
/// assert!(budget.try_retry());
/// assert!(!budget.try_retry(), "spent");
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    capacity: f64,
    per_request: f64,
    per_second: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
}

impl Default for RetryBudget {
    /// 100 tokens, 0.2 earned per request, 10 per second.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RetryBudget {
    /// Starts configuring a budget, from the defaults (see
    /// [`RetryBudget::default`]).
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            capacity: 100.0,
            per_request: 0.2,
            per_second: 10.0,
        }
    }

    /// No limit beyond each request's own policy.
    ///
    /// ```
    /// let budget = idempotent_client::RetryBudget::unlimited();
    /// assert!((0..10_000).all(|_| budget.try_retry()));
    /// ```
    pub fn unlimited() -> Self {
        RetryBudgetBuilder {
            capacity: f64::MAX,
            per_request: 0.0,
            per_second: 0.0,
        }
        .build()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(state.refilled).as_secs_f64() * self.per_second;
        state.tokens = (state.tokens + earned).min(self.capacity);
        state.refilled = now;
        f(&mut state)
    }

    /// Records a request's first attempt (it earns the budget
    /// [`per_request`](RetryBudgetBuilder::per_request) tokens).
    pub fn deposit(&self) {
        self.with(|state| state.tokens = (state.tokens + self.per_request).min(self.capacity));
    }

    /// Takes one token for a retry; `false` when the bucket is empty.
    pub fn try_retry(&self) -> bool {
        self.with(|state| {
            if state.tokens >= 1.0 {
                state.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

/// Configures a [`RetryBudget`]; from [`RetryBudget::builder`].
///
/// ```
/// use idempotent_client::RetryBudget;
///
/// // Retries within about a tenth of the traffic, at least one a second,
/// // and at most 20 in a burst.
/// let budget = RetryBudget::builder()
///     .capacity(20)
///     .per_request(0.1)
///     .per_second(1.0)
///     .build();
/// # let _ = budget;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryBudgetBuilder {
    capacity: f64,
    per_request: f64,
    per_second: f64,
}

impl RetryBudgetBuilder {
    /// The most tokens the bucket holds, each paying for one retry: the
    /// largest burst of retries (default 100). The bucket starts full.
    pub fn capacity(mut self, tokens: u32) -> Self {
        self.capacity = f64::from(tokens);
        self
    }

    /// The tokens each request earns as its first attempt starts (default
    /// 0.2): retries stay within about this share of the requests.
    pub fn per_request(mut self, tokens: f64) -> Self {
        self.per_request = tokens;
        self
    }

    /// The tokens earned per second, whatever the traffic (default 10), so
    /// that a quiet client can still retry.
    pub fn per_second(mut self, tokens: f64) -> Self {
        self.per_second = tokens;
        self
    }

    /// The budget, its bucket full. The rates are checked here, and
    /// clamped rather than refused: one that is negative or not a number
    /// counts as 0 (no tokens earned that way), an infinite one as
    /// [`f64::MAX`].
    ///
    /// ```
    /// use idempotent_client::RetryBudget;
    ///
    /// let budget = RetryBudget::builder()
    ///     .capacity(1)
    ///     .per_request(f64::NAN)
    ///     .per_second(-5.0)
    ///     .build();
    /// assert!(budget.try_retry());
    /// budget.deposit();
    /// assert!(!budget.try_retry(), "nothing earned: the rates count as 0");
    /// ```
    pub fn build(self) -> RetryBudget {
        let rate = |tokens: f64| {
            if tokens.is_nan() {
                0.0
            } else {
                tokens.clamp(0.0, f64::MAX)
            }
        };
        RetryBudget {
            capacity: self.capacity,
            per_request: rate(self.per_request),
            per_second: rate(self.per_second),
            state: Mutex::new(State {
                tokens: self.capacity,
                refilled: Instant::now(),
            }),
        }
    }
}
