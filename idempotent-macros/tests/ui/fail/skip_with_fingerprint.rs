use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id, skip(amount), fingerprint = id)]
async fn both(id: u64, amount: u64) -> Result<u64, MyError> {
    Ok(id + amount)
}

fn main() {}
