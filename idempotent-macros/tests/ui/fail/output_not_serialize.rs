use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct NotSerialize;

#[idempotent(key = id)]
async fn opaque(id: u64) -> Result<NotSerialize, MyError> {
    let _ = id;
    Ok(NotSerialize)
}

fn main() {}
