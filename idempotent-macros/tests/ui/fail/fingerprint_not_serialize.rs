use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct Order;

// The `fingerprint` value is serialized: it must implement `Serialize`.
#[idempotent(key = id, fingerprint = order)]
async fn charge(id: u64, order: &Order) -> Result<u64, MyError> {
    let _ = order;
    Ok(id)
}

fn main() {}
