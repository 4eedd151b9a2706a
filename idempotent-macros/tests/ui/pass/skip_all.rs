//! `skip_all`: no argument is fingerprinted, so none needs `Serialize`, and
//! the key alone identifies the call.
use std::sync::atomic::{AtomicU32, Ordering};

use idempotent_core::{Error, Idempotency, idempotent};
use idempotent_core::memory::MemoryStore;

/// Not `Serialize`: how the call runs, not what it asks for.
pub struct Client {
    pub calls: AtomicU32,
}

#[idempotent(key = order, runtime = rt, skip_all)]
async fn notify(rt: &Idempotency, client: &Client, order: &str, note: String) -> Result<u32, Error> {
    let _ = note;
    Ok(client.calls.fetch_add(1, Ordering::SeqCst) + 1)
}

/// A destructured argument needs no name when nothing is fingerprinted.
#[idempotent(key = id, skip_all)]
async fn pair(id: u64, (a, b): (u64, u64)) -> Result<u64, Error> {
    Ok(id + a + b)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rt = Idempotency::new(MemoryStore::new());
    let client = Client { calls: AtomicU32::new(0) };
    assert_eq!(notify(&rt, &client, "order-1", "first".into()).await.unwrap(), 1);
    // Other arguments, same key: a replay, not a reused key.
    assert_eq!(notify(&rt, &client, "order-1", "second".into()).await.unwrap(), 1);
    assert_eq!(client.calls.load(Ordering::SeqCst), 1);
    let _ = pair;
}
