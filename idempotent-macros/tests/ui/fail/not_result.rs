use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id)]
async fn returns_u64(id: u64) -> u64 {
    id
}

fn main() {}
