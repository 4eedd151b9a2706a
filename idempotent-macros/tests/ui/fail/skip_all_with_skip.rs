use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

// `skip_all` already leaves every argument out.
#[idempotent(key = id, skip_all, skip(amount))]
async fn both(id: u64, amount: u64) -> Result<u64, MyError> {
    Ok(id + amount)
}

fn main() {}
