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

// An `Err` rolls the transaction back: there is nothing to cache.
#[idempotent(key = id, transaction = Store, cache_errors)]
async fn charge(#[tx] tx: &mut Connection, id: u64) -> Result<u64, MyError> {
    let _ = tx;
    Ok(id)
}

fn main() {}
