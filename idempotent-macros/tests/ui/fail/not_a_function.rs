use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

// The attribute goes on the function, not on a type.
#[idempotent(key = id)]
pub struct Payment {
    pub id: u64,
}

pub trait Charge {
    // A declaration has no body to run once.
    #[idempotent(key = id)]
    async fn charge(&self, id: u64) -> Result<u64, MyError>;
}

fn main() {}
