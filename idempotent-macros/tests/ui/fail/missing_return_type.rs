use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id)]
async fn no_return_type(id: u64) {
    let _ = id;
}

fn main() {}
