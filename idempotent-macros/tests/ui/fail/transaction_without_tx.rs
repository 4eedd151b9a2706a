use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct Store;

// `transaction` needs an argument marked `#[tx]` to receive the connection.
#[idempotent(key = id, transaction = Store)]
async fn charge(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

fn main() {}
