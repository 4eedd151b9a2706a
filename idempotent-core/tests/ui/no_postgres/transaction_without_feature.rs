// Built without idempotent-core's `postgres` feature: one error that names it.
use idempotent_core::{Error, idempotent};

pub struct Store;

#[idempotent(key = id, transaction = Store)]
async fn charge(#[tx] tx: &mut sqlx::PgConnection, id: u64) -> Result<u64, Error> {
    let _ = tx;
    Ok(id)
}

fn main() {}
