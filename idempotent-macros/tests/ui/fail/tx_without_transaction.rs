use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct Connection;

// `#[tx]` only means something with `transaction = <store>`.
#[idempotent(key = id)]
async fn charge(#[tx] tx: &mut Connection, id: u64) -> Result<u64, MyError> {
    let _ = tx;
    Ok(id)
}

fn main() {}
