use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(ttl = "1h")]
async fn keyless(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

fn main() {}
