use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id, lease = "10ms")]
async fn short_lease(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

#[idempotent(key = id, ttl = "40000d")]
async fn ttl_over_a_century(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

fn main() {}
