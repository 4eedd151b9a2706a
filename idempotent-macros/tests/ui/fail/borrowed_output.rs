// The `Ok` value is stored and replayed: it must own its data.
use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

#[idempotent(key = id)]
async fn label(id: u64) -> Result<&'static str, MyError> {
    let _ = id;
    Ok("paid")
}

#[idempotent(key = id)]
async fn labels(id: u64) -> Result<Vec<&'static [u8]>, MyError> {
    let _ = id;
    Ok(vec![b"paid"])
}

// With `cache_errors`, the `Err` value is stored too.
#[idempotent(key = id, cache_errors)]
async fn refuse(id: u64) -> Result<u64, &'static str> {
    Err(if id == 0 { "zero" } else { "refused" })
}

fn main() {}
