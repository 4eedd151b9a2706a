use idempotent_core::{Error, Steps, idempotent};

// A call has one journal of steps.
#[idempotent(key = id)]
async fn charge(id: u64, #[steps] one: Steps, #[steps] two: Steps) -> Result<u64, Error> {
    let _ = (one, two);
    Ok(id)
}

fn main() {}
