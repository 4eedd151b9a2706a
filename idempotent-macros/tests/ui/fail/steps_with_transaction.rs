use idempotent_core::{Error, Steps, idempotent};

pub struct Store;

// A step's effect outside the database cannot roll back with the
// transaction: `#[steps]` and `transaction` do not go together.
#[idempotent(key = id, transaction = Store)]
async fn charge(id: u64, #[tx] tx: &mut u64, #[steps] steps: Steps) -> Result<u64, Error> {
    let _ = (tx, steps);
    Ok(id)
}

fn main() {}
