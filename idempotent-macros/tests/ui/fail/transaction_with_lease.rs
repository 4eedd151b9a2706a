use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct Store;
pub struct Connection;

// The record lives in the transaction: a lease means nothing there.
#[idempotent(key = id, transaction = Store, lease = "30s")]
async fn charge(#[tx] tx: &mut Connection, id: u64) -> Result<u64, MyError> {
    let _ = tx;
    Ok(id)
}

fn main() {}
