//! One order of the `checkout` example: an idempotent call with three side
//! effects (a charge at the payments-server, a stock reservation row in
//! PostgreSQL, an email to the mail sink), each a journaled step; and the
//! same work without steps, to show the problem. The order may crash at a
//! chosen point, as the example's `--crash-rate` draws it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use idempotent_client::IdempotentClient;
use idempotent_core::{Error, Idempotency, Operation, Steps};

/// One call per order; a crashed worker's lease lapses quickly, and the
/// restarted worker waits for it.
pub static CHECKOUT: Operation = Operation::new("checkout")
    .ttl(Duration::from_secs(3600))
    .lease(Duration::from_secs(1))
    .wait(Duration::from_secs(30));

/// Where an order's run may crash: before the charge, after the charge's
/// answer but before its step is recorded (its derived key makes the charge
/// safe to send again), after the charge, before the reservation's insert,
/// after the reservation, before the email is sent, after the email.
pub const CRASH_POINTS: usize = 7;

/// How an order's run crashes at its crash point.
#[derive(Clone)]
pub enum Crash {
    /// The whole process aborts (`std::process::abort`: no cleanup, no
    /// destructor, no release).
    Process,
    /// The order's task cancels itself (the memory store's records die
    /// with the process, so the worker runs in the example's process).
    Task(Arc<Mutex<Option<tokio::task::AbortHandle>>>),
    /// The worker says `holding at <point>` on its standard output and
    /// waits there for good: the program kills it from outside (SIGKILL).
    Hold(usize),
}

impl Crash {
    /// Crashes now.
    async fn now(&self) {
        match self {
            Self::Process => std::process::abort(),
            Self::Task(handle) => {
                if let Some(handle) = handle.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    handle.abort();
                }
                // Dropped at this await: the task is cancelled.
                std::future::pending::<()>().await;
            }
            Self::Hold(point) => {
                {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "holding at {point}");
                    let _ = out.flush();
                }
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What an order's steps need.
#[derive(Clone)]
pub struct Services {
    /// The idempotency runtime, on the example's store.
    pub runtime: Idempotency,
    /// The payments-server's `/payments`.
    pub payments: String,
    /// The mail sink's base URL.
    pub mail: String,
    /// The stock reservations: a table with no unique constraint.
    pub database: sqlx::PgPool,
    /// The reservations table's name.
    pub table: String,
    /// Sends the charge (no journal: the key is the step's derived key).
    pub client: IdempotentClient,
    /// A raw client, for the mail sink.
    pub http: reqwest::Client,
}

/// Why an order failed: the library's error, or a side effect's.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The idempotency engine's.
    #[error(transparent)]
    Idempotency(#[from] Error),
    /// A side effect failed (the payments-server, the database, the sink).
    #[error("{0}")]
    Effect(String),
}

impl OrderError {
    /// Whether running the order again may succeed: a lease lost on a
    /// stalled machine, a duplicate still in progress, the store or a
    /// service briefly unavailable.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Effect(_)
                | Self::Idempotency(
                    Error::LeaseLost { .. } | Error::InProgress { .. } | Error::StoreUnavailable(_)
                )
        )
    }
}

/// Runs order `i` until it is done: a transient failure runs it again (up
/// to 5 runs in all, a short pause between them), crashing at `crash_at`,
/// if set, in the first run only.
pub async fn order_until_done(
    services: &Services,
    i: u64,
    steps_on: bool,
    crash_at: Option<usize>,
    crash: &Crash,
) -> Result<String, OrderError> {
    let mut crash_at = crash_at;
    let mut runs = 0;
    loop {
        runs += 1;
        match order(services, i, steps_on, crash_at, crash).await {
            Err(error) if error.is_transient() && runs < 5 => {
                tracing::warn!(order = i, %error, "running the order again");
                crash_at = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done,
        }
    }
}

/// Runs order `i` once: with journaled steps or without, crashing at
/// `crash_at` if it is set. Returns the charge's id.
pub async fn order(
    services: &Services,
    i: u64,
    steps_on: bool,
    crash_at: Option<usize>,
    crash: &Crash,
) -> Result<String, OrderError> {
    let point = |n: usize| async move {
        if crash_at == Some(n) {
            crash.now().await;
        }
    };
    let steps = Steps::new();
    let call = services
        .runtime
        .call(&CHECKOUT)
        .key(&format!("order-{i}"))
        .payload(&i);
    let call = if steps_on { call.steps(&steps) } else { call };
    // Each effect carries a key for its downstream: with steps, derived
    // from the call's key (the same on every run, so an effect whose step
    // did not get to record its value, its worker crashed in between, is
    // sent again under the same key and not done twice); without steps, a
    // key made for this run (the naive way), so a run after a crash
    // repeats every effect.
    let key = |name: &str| match steps_on {
        true => steps.key(name),
        false => Ok(uuid::Uuid::new_v4().to_string()),
    };
    let done = call
        .run(async {
            point(0).await;
            let charge = async {
                let id = charge(services, i, &key("charge")?).await?;
                point(1).await;
                Ok::<_, OrderError>(id)
            };
            let charge: String = match steps_on {
                true => steps.run("charge", charge).await?,
                false => charge.await?,
            };
            point(2).await;
            let reserve = async {
                point(3).await;
                reserve(services, i, &key("reserve")?).await
            };
            let _reservation: i64 = match steps_on {
                true => steps.run("reserve", reserve).await?,
                false => reserve.await?,
            };
            point(4).await;
            // A value that changes per run, journaled: the same reference
            // on every run of the order (without steps, a new one per run).
            let reference = match steps_on {
                true => steps.uuid("reference").await?,
                false => uuid::Uuid::new_v4(),
            };
            let email = async {
                point(5).await;
                email(services, i, &key("email")?, reference).await
            };
            match steps_on {
                true => steps.run("email", email).await?,
                false => email.await?,
            }
            point(6).await;
            Ok::<_, OrderError>(charge)
        })
        .await?;
    Ok(done.value)
}

/// The charge of order `i` at the payments-server, with `key`.
async fn charge(services: &Services, i: u64, key: &str) -> Result<String, OrderError> {
    let sent = services
        .client
        .post(&services.payments)
        .json(&serde_json::json!({ "amount": amount(i), "currency": "USD" }))
        .key(key)
        .send()
        .await
        .map_err(failed)?;
    let payment: crate::payments::Payment = sent.response.json().await.map_err(failed)?;
    Ok(payment.id)
}

/// The amount of order `i`: the ledger tells the orders apart by it.
pub fn amount(i: u64) -> u64 {
    10_000 + i
}

/// Reserves stock for order `i` under `key`: one row, unless a row with
/// that key exists (the call's lease lets one worker at a time run the
/// order, so the check and the insert do not race); returns its id.
async fn reserve(services: &Services, i: u64, key: &str) -> Result<i64, OrderError> {
    let table = &services.table;
    let sql = format!(
        "WITH found AS (SELECT id FROM {table} WHERE key = $2), \
         made AS (INSERT INTO {table} (order_id, key) SELECT $1, $2 \
                  WHERE NOT EXISTS (SELECT 1 FROM found) RETURNING id) \
         SELECT id FROM found UNION ALL SELECT id FROM made"
    );
    sqlx::query_scalar(&sql)
        .bind(i as i64)
        .bind(key)
        .fetch_one(&services.database)
        .await
        .map_err(failed)
}

/// Emails order `i`'s confirmation with its `reference`, and `key` as its
/// idempotency key (the sink, like a mail provider that takes keys, sends
/// a key's message once).
async fn email(
    services: &Services,
    i: u64,
    key: &str,
    reference: uuid::Uuid,
) -> Result<(), OrderError> {
    services
        .http
        .post(format!("{}/mail/{i}", services.mail))
        .header("idempotency-key", key)
        .header("x-order-reference", reference.to_string())
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?;
    Ok(())
}

/// A side effect that failed: the call fails, and its key is released.
fn failed(error: impl std::fmt::Display) -> OrderError {
    OrderError::Effect(error.to_string())
}

/// What the mail sink has: the messages sent per order, the keys seen, and
/// the order references every request carried (sent or not).
#[derive(Default)]
pub struct Mailbox {
    sent: HashMap<u64, u64>,
    keys: HashSet<String>,
    references: HashMap<u64, HashSet<String>>,
}

type Shared = Arc<Mutex<Mailbox>>;

/// The mail sink: `POST /mail/{order}` sends a message for the order,
/// once per `Idempotency-Key` (a message without one is always sent);
/// `GET /mail` answers the messages sent per order, and `GET /references`
/// how many distinct order references each order's requests carried.
pub fn mail_sink() -> Router {
    Router::new()
        .route("/mail/{order}", post(receive))
        .route("/mail", get(list))
        .route("/references", get(references))
        .with_state(Shared::default())
}

async fn receive(State(mailbox): State<Shared>, Path(order): Path<u64>, headers: HeaderMap) {
    let mut mailbox = mailbox.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(reference) = headers
        .get("x-order-reference")
        .and_then(|value| value.to_str().ok())
    {
        mailbox
            .references
            .entry(order)
            .or_default()
            .insert(reference.to_owned());
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|key| key.to_str().ok());
    if let Some(key) = key
        && !mailbox.keys.insert(key.to_owned())
    {
        return;
    }
    *mailbox.sent.entry(order).or_default() += 1;
}

async fn list(State(mailbox): State<Shared>) -> axum::Json<HashMap<u64, u64>> {
    let mailbox = mailbox.lock().unwrap_or_else(PoisonError::into_inner);
    axum::Json(mailbox.sent.clone())
}

async fn references(State(mailbox): State<Shared>) -> axum::Json<HashMap<u64, usize>> {
    let mailbox = mailbox.lock().unwrap_or_else(PoisonError::into_inner);
    let counts = mailbox.references.iter();
    axum::Json(counts.map(|(order, refs)| (*order, refs.len())).collect())
}
