use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

// Each option is written as the documentation shows; a value of another
// shape is refused with what to write.
#[idempotent(key = id, ttl = 24)]
async fn ttl_not_a_string(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

#[idempotent(key = id, skip = amount)]
async fn skip_without_parentheses(id: u64, amount: u64) -> Result<u64, MyError> {
    Ok(id + amount)
}

pub struct Desk;

impl Desk {
    #[idempotent(key = id, skip(self))]
    async fn skip_self(&self, id: u64) -> Result<u64, MyError> {
        Ok(id)
    }
}

#[idempotent(key = id, name = charge)]
async fn name_not_a_string(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

#[idempotent(key = id, name = "")]
async fn empty_name(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

#[idempotent(key = id, crate = "not a path")]
async fn crate_not_a_path(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

fn main() {}
