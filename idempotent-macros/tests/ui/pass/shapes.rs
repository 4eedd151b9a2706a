//! Every function shape `#[idempotent]` supports.
use idempotent_core::{Error, Idempotency, idempotent};
use idempotent_core::memory::MemoryStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PayError {
    Declined,
    Idempotency(String),
}

impl From<Error> for PayError {
    fn from(error: Error) -> Self {
        Self::Idempotency(error.to_string())
    }
}

fn parse(input: &str) -> Result<u64, PayError> {
    input.parse().map_err(|_| PayError::Declined)
}

/// Docs and attributes are kept.
#[idempotent(key = id, ttl = "24h", lease = "30s")]
#[allow(clippy::needless_return)]
pub async fn free(id: &str, amount: u64) -> Result<Receipt, PayError> {
    let n = parse(id)?;
    if amount == 0 {
        return Err(PayError::Declined);
    }
    Ok(Receipt { id: n + amount })
}

/// An inner attribute stays inside the body.
#[idempotent(key = id)]
pub async fn inner_attribute(id: u64) -> Result<u64, PayError> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(id)
}

#[idempotent(key = id, runtime = rt, skip(rt), wait = "5s")]
async fn with_runtime(rt: &Idempotency, id: u64) -> Result<u64, PayError> {
    Ok(id)
}

#[idempotent(key = key, fingerprint = (a, b.len()))]
async fn explicit_fingerprint<'a>(key: &'a str, a: u32, b: &'a [u8]) -> Result<u32, PayError> {
    Ok(a + b.len() as u32)
}

#[idempotent(key = format!("{}-{}", prefix, Into::<u64>::into(n)), name = "shapes.generic")]
async fn generic<T>(prefix: impl std::fmt::Display + Serialize, n: T) -> Result<String, PayError>
where
    T: Serialize + Copy + Into<u64> + Send,
{
    Ok(format!("{prefix}{}", n.into()))
}

#[idempotent(key = id, cache_errors = "5m")]
async fn caches_errors(id: u64) -> Result<u64, PayError> {
    Err(PayError::Declined)
}

#[idempotent(key = id, cache_errors, crate = "idempotent_core")]
async fn caches_errors_default_ttl(id: u64, _: u8) -> Result<(), PayError> {
    Ok(())
}

pub struct Service {
    idem: Idempotency,
    charges: u64,
}

impl Service {
    #[idempotent(key = id, runtime = self.idem, scope = tenant)]
    pub async fn charge(&self, tenant: &str, id: String) -> Result<Receipt, PayError> {
        Ok(Receipt { id: id.len() as u64 + tenant.len() as u64 })
    }

    #[idempotent(key = id, runtime = self.idem)]
    async fn charge_mut(&mut self, id: u64) -> Result<u64, PayError> {
        self.charges += 1;
        Ok(self.charges)
    }

    #[idempotent(key = id, runtime = self.idem)]
    async fn by_value(self, id: u64) -> Result<u64, PayError> {
        Ok(self.charges + id)
    }
}

pub trait Charger {
    fn charge(&self, id: u64) -> impl std::future::Future<Output = Result<u64, PayError>> + Send;
}

impl Charger for Service {
    #[idempotent(key = id, runtime = self.idem)]
    async fn charge(&self, id: u64) -> Result<u64, PayError> {
        Ok(id)
    }
}

fn assert_send<T: Send>(_: T) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rt = Idempotency::new(MemoryStore::new());
    let _ = free("1", 2).await;
    let _ = with_runtime(&rt, 1).await;
    let _ = explicit_fingerprint("k", 1, b"x").await;
    let _ = generic("p", 1u32).await;
    let _ = caches_errors(1).await;
    let _ = caches_errors_default_ttl(1, 0).await;
    let mut service = Service { idem: rt.clone(), charges: 0 };
    assert_send(service.charge("t", "k".to_owned()));
    let _ = service.charge("t", "k".to_owned()).await;
    let _ = service.charge_mut(1).await;
    let _ = Charger::charge(&service, 1).await;
    let _ = service.by_value(1).await;
}
