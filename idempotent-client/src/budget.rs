//! The client-wide retry budget: a token bucket, so an outage does not turn
//! into a retry storm.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Retries are paid from a bucket of tokens shared by every request of a
/// client: each retry takes one; each first attempt puts back `ratio`
/// (so retries stay within about `ratio` of the traffic), and time adds
/// `per_second`, so a quiet client can still retry. When the bucket is
/// empty, requests stop retrying and return their last answer (their intents
/// stay pending, to be resumed later).
///
/// ```
/// use idempotent_client::RetryBudget;
///
/// let budget = RetryBudget::new(2.0, 0.0, 0.0);
/// assert!(budget.try_retry());
/// assert!(budget.try_retry());
/// assert!(!budget.try_retry(), "spent");
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    capacity: f64,
    ratio: f64,
    per_second: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
}

impl Default for RetryBudget {
    /// 100 tokens, 0.2 per first attempt, 10 per second.
    fn default() -> Self {
        Self::new(100.0, 0.2, 10.0)
    }
}

impl RetryBudget {
    /// A full bucket of `capacity` tokens, refilled by `ratio` per first
    /// attempt and by `per_second` over time.
    pub fn new(capacity: f64, ratio: f64, per_second: f64) -> Self {
        let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        Self {
            capacity: clean(capacity),
            ratio: clean(ratio),
            per_second: clean(per_second),
            state: Mutex::new(State {
                tokens: clean(capacity),
                refilled: Instant::now(),
            }),
        }
    }

    /// No limit beyond each request's own policy.
    pub fn unlimited() -> Self {
        Self::new(f64::MAX, 0.0, 0.0)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(state.refilled).as_secs_f64() * self.per_second;
        state.tokens = (state.tokens + earned).min(self.capacity);
        state.refilled = now;
        f(&mut state)
    }

    /// Records a first attempt (it earns the budget `ratio` tokens).
    pub fn deposit(&self) {
        self.with(|state| state.tokens = (state.tokens + self.ratio).min(self.capacity));
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
