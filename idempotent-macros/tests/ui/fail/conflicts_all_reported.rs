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

// Three conflicts: each is reported at its option, in one build.
#[idempotent(key = id, transaction = Store, lease = "30s", cache_errors, skip(id), fingerprint = 1)]
async fn charge(#[tx] tx: &mut Connection, id: u64) -> Result<u64, MyError> {
    let _ = tx;
    Ok(id)
}

fn main() {}
