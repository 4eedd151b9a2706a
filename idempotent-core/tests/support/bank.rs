//! A payment service whose charges are `#[idempotent]` methods, counting how
//! many times a body really ran.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, idempotent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The execution that produced it (1 for the first run).
    pub charge: usize,
    pub amount: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("card declined")]
    Declined,
    #[error(transparent)]
    Idempotency(#[from] Error),
}

impl PayError {
    /// The library's error, if this is one.
    pub fn idempotency(&self) -> Option<&Error> {
        match self {
            Self::Idempotency(error) => Some(error),
            Self::Declined => None,
        }
    }
}

/// An error type that can be stored, for `cache_errors`.
#[derive(Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoredError {
    #[error("declined on charge {0}")]
    Declined(usize),
    #[error("{0}")]
    Idempotency(String),
}

impl From<Error> for StoredError {
    fn from(error: Error) -> Self {
        Self::Idempotency(error.to_string())
    }
}

pub struct Bank {
    pub idem: Idempotency,
    runs: AtomicUsize,
}

impl Bank {
    pub fn new() -> Self {
        Self::with(Idempotency::new(MemoryStore::new()))
    }

    pub fn with(idem: Idempotency) -> Self {
        Self {
            idem,
            runs: AtomicUsize::new(0),
        }
    }

    /// How many times a body ran.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    async fn execute(&self, amount: u64, work: Duration) -> Receipt {
        let charge = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        Receipt { charge, amount }
    }

    #[idempotent(key = id, runtime = self.idem)]
    pub async fn charge(&self, id: &str, amount: u64) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, Duration::ZERO).await)
    }

    /// Takes `work` to run; fails at once on a duplicate in progress.
    #[idempotent(key = id, runtime = self.idem, lease = "300ms", skip(work))]
    pub async fn charge_slowly(
        &self,
        id: &str,
        amount: u64,
        work: Duration,
    ) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, work).await)
    }

    /// Takes `work` to run; a duplicate in progress waits for it.
    #[idempotent(key = id, runtime = self.idem, wait = "10s", skip(work))]
    pub async fn charge_waiting(
        &self,
        id: &str,
        amount: u64,
        work: Duration,
    ) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, work).await)
    }

    #[idempotent(key = id, runtime = self.idem, scope = tenant, skip(tenant))]
    pub async fn charge_for(
        &self,
        tenant: &str,
        id: &str,
        amount: u64,
    ) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, Duration::ZERO).await)
    }

    /// Another operation, so the same key is another record.
    #[idempotent(key = id, runtime = self.idem)]
    pub async fn refund(&self, id: &str, amount: u64) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, Duration::ZERO).await)
    }

    #[idempotent(key = id, runtime = self.idem, skip(decline))]
    pub async fn charge_or_decline(
        &self,
        id: &str,
        amount: u64,
        decline: bool,
    ) -> Result<Receipt, PayError> {
        let receipt = self.execute(amount, Duration::ZERO).await;
        if decline {
            Err(PayError::Declined)
        } else {
            Ok(receipt)
        }
    }

    #[idempotent(key = id, runtime = self.idem, cache_errors = "1m", skip(decline))]
    pub async fn charge_caching_errors(
        &self,
        id: &str,
        amount: u64,
        decline: bool,
    ) -> Result<Receipt, StoredError> {
        let receipt = self.execute(amount, Duration::ZERO).await;
        if decline {
            Err(StoredError::Declined(receipt.charge))
        } else {
            Ok(receipt)
        }
    }

    #[idempotent(key = id, runtime = self.idem, skip(explode))]
    pub async fn charge_or_panic(
        &self,
        id: &str,
        amount: u64,
        explode: bool,
    ) -> Result<Receipt, PayError> {
        let receipt = self.execute(amount, Duration::ZERO).await;
        assert!(!explode, "the card reader exploded");
        Ok(receipt)
    }

    #[idempotent(key = id, runtime = self.idem, ttl = "1s")]
    pub async fn charge_briefly(&self, id: &str, amount: u64) -> Result<Receipt, PayError> {
        Ok(self.execute(amount, Duration::ZERO).await)
    }
}
