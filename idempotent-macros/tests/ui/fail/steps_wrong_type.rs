use idempotent_core::{Error, idempotent};

// A `#[steps]` argument is `Steps` or `&Steps`.
#[idempotent(key = id)]
async fn charge(id: u64, #[steps] steps: String) -> Result<u64, Error> {
    let _ = steps;
    Ok(id)
}

fn main() {}
