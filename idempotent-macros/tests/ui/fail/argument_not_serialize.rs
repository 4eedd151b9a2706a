// An argument is part of the payload fingerprint unless skipped: one whose
// type is not `Serialize` (a client, an app state, a lock) is reported at
// its type, with the ways to leave it out.
use idempotent_core::{Error, idempotent};

#[derive(Debug)]
pub struct MyError;

impl From<Error> for MyError {
    fn from(_: Error) -> Self {
        MyError
    }
}

pub struct Client;
pub struct State<T>(pub T);
pub struct AppState;

#[idempotent(key = id)]
async fn charge(id: u64, client: Client, state: State<AppState>, amount: u64) -> Result<u64, MyError> {
    let _ = (client, state);
    Ok(id + amount)
}

#[idempotent(key = id)]
async fn locked(id: u64, ledger: &tokio::sync::Mutex<Vec<u64>>) -> Result<u64, MyError> {
    ledger.lock().await.push(id);
    Ok(id)
}

fn main() {}
