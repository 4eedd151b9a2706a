// A layer is built once its scope is chosen: the caller's identity, or
// `single_tenant()`.
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;

fn main() {
    let _layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).build();
}
