use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id)]
async fn destructured(id: u64, (a, b): (u64, u64)) -> Result<u64, MyError> {
    Ok(id + a + b)
}

fn main() {}
