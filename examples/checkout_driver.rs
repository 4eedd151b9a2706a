//! `cargo run --example checkout -- [--store memory|redis://...|postgres://...]
//! [--orders N] [--crash-rate P] [--seed S] [--no-steps] [--database URL]`
//!
//! Journaled steps under crashes. Each order is one idempotent call with
//! three side effects: a charge at a payments-server (through the client,
//! with a key derived from the call's), a stock reservation row in
//! PostgreSQL, and an email to a mail sink. With `--crash-rate P`, a run of
//! an order aborts the worker process (`std::process::abort`) at a random
//! point between or inside its steps with chance P; this program restarts
//! the worker until every order is done, then counts the effects. On
//! `memory`, whose records die with the process, the worker runs in this
//! process and a crash cancels the order's task instead.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use examples::checkout::{CRASH_POINTS, Crash, Services, amount, mail_sink, order_until_done};
use examples::payments::{Config, LedgerEntry, app};
use idempotent_client::{IdempotentClient, MemoryJournal, default_http_client};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::postgres::PostgresStore;
use idempotent_core::redis::RedisStore;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;

/// Runs N orders, each one idempotent call with three journaled steps (a
/// charge, a stock reservation, an email), while the worker crashes at
/// random points; restarts it until every order is done, and counts the
/// charges, reservations and emails, and the duplicates among them.
#[derive(clap::Parser)]
#[command(name = "checkout", version)]
struct Args {
    /// Where records and steps live: `memory`, `redis://HOST:PORT` or `postgres://...`.
    #[arg(long, default_value = "memory", value_parser = store_url)]
    store: String,
    /// How many orders.
    #[arg(long, value_name = "N", default_value_t = 200)]
    orders: u64,
    /// The chance that a run of an order crashes the worker, at a random
    /// point between or inside its steps.
    #[arg(long = "crash-rate", value_name = "P", default_value_t = 0.2, value_parser = rate)]
    crash_rate: f64,
    /// Seeds where the crashes fall.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// The same work without journaled steps, to show the problem.
    #[arg(long = "no-steps")]
    no_steps: bool,
    /// The PostgreSQL of the reservations table (created and dropped by the run).
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database: String,
    /// How many orders a worker runs at once.
    #[arg(long, value_name = "C", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Kill the first worker from outside (SIGKILL) once its first order
    /// reaches crash point P (0 before the charge ... 6 after the email),
    /// then run on. Not with `memory`.
    #[arg(long = "sigkill-at", value_name = "P", value_parser = clap::value_parser!(u8).range(0..7))]
    sigkill_at: Option<u8>,
    /// Internal: run as the worker process.
    #[command(flatten)]
    worker: WorkerArgs,
}

/// What the worker process is told by the program that starts it.
#[derive(clap::Args, Clone)]
struct WorkerArgs {
    /// Run as a worker (set by the program for the processes it starts).
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, default_value = "")]
    payments: String,
    #[arg(long, hide = true, default_value = "")]
    mail: String,
    #[arg(long, hide = true, default_value = "")]
    table: String,
    #[arg(long, hide = true, default_value = "")]
    namespace: String,
    /// Which run of the worker this is (the crashes differ per run).
    #[arg(long, hide = true, default_value_t = 0)]
    run: u64,
    /// The first order waits at this crash point, to be killed.
    #[arg(long = "hold-at", hide = true)]
    hold_at: Option<usize>,
}

fn store_url(text: &str) -> Result<String, String> {
    if text == "memory" || text.starts_with("redis://") || text.starts_with("postgres://") {
        Ok(text.to_owned())
    } else {
        Err("expected `memory`, `redis://HOST:PORT` or `postgres://...`".to_owned())
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err("a chance from 0 up to (not including) 1, such as 0.2".to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let result = if args.worker.worker {
        worker(&args).await
    } else {
        drive(&args).await
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("checkout: {error}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The program: starts the services, runs the orders (restarting crashed
/// workers), counts the effects and prints the table.
async fn drive(args: &Args) -> Result<ExitCode, Failure> {
    let payments = serve(app(&Config::default()).await?).await?;
    let mail = serve(mail_sink()).await?;
    let database = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database)
        .await?;
    let table = format!("checkout_reservations_{}", std::process::id());
    sqlx::query(&format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL, key TEXT NOT NULL)"
    ))
    .execute(&database)
    .await?;
    let worker = WorkerArgs {
        worker: true,
        payments: format!("{payments}/payments"),
        mail: mail.clone(),
        table: table.clone(),
        namespace: format!("checkout-{}-{}", std::process::id(), args.seed),
        run: 0,
        hold_at: None,
    };
    if args.sigkill_at.is_some() && args.store == "memory" {
        return Err(
            "--sigkill-at needs a worker process: a shared store (redis:// or postgres://)".into(),
        );
    }
    let restarts = match args.store.as_str() {
        "memory" => in_process(args, &worker).await,
        _ => processes(args, &worker).await,
    };
    let tally = match restarts {
        Ok(restarts) => count(args, &payments, &mail, &database, &table, restarts).await,
        Err(error) => Err(error),
    };
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&database)
        .await?;
    let tally = tally?;
    let label = if args.no_steps {
        "without steps"
    } else {
        "with steps"
    };
    println!(
        "{:<16}{:>8}{:>10}{:>9}{:>14}{:>8}{:>12}",
        "", "orders", "restarts", "charges", "reservations", "emails", "duplicates"
    );
    println!(
        "{label:<16}{:>8}{:>10}{:>9}{:>14}{:>8}{:>12}",
        args.orders,
        tally.restarts,
        tally.charges,
        tally.reservations,
        tally.emails,
        tally.duplicates
    );
    println!(
        "orders whose reference changed between runs: {}",
        tally.changed_references
    );
    let complete = tally.orders_charged == args.orders
        && tally.orders_reserved == args.orders
        && tally.orders_emailed == args.orders;
    if !complete {
        eprintln!("checkout: not every order got its charge, reservation and email");
        return Ok(ExitCode::FAILURE);
    }
    if !args.no_steps && (tally.duplicates > 0 || tally.changed_references > 0) {
        eprintln!("BUG: with journaled steps, an effect ran twice or a journaled value changed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves `router` on a free loopback port; its base URL.
async fn serve(router: axum::Router) -> Result<String, Failure> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(base)
}

/// Where run `run` of order `i` crashes, if it does.
fn crash_point(args: &Args, run: u64, i: u64) -> Option<usize> {
    let mut rng = fastrand::Rng::with_seed(
        args.seed ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    (rng.f64() < args.crash_rate).then(|| rng.usize(..CRASH_POINTS))
}

/// The services of a worker on `runtime`.
async fn services(
    runtime: Idempotency,
    args: &Args,
    worker: &WorkerArgs,
) -> Result<Services, Failure> {
    Ok(Services {
        runtime,
        payments: worker.payments.clone(),
        mail: worker.mail.clone(),
        database: PgPoolOptions::new()
            .max_connections(8)
            .connect(&args.database)
            .await?,
        table: worker.table.clone(),
        // No journal needed: the charge's key is the step's derived key.
        client: IdempotentClient::builder()
            .journal(MemoryJournal::new())
            .build()?,
        http: default_http_client()?,
    })
}

/// On `memory`: the worker in this process; a crash cancels the order's
/// task, and the order runs again. Returns the crashes.
async fn in_process(args: &Args, worker: &WorkerArgs) -> Result<u64, Failure> {
    let runtime = Idempotency::builder(MemoryStore::new())
        .namespace(worker.namespace.clone())
        .build();
    let services = Arc::new(services(runtime, args, worker).await?);
    let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let mut orders = Vec::new();
    for i in 0..args.orders {
        let (services, permits, steps_on) = (services.clone(), permits.clone(), !args.no_steps);
        let crashes: Vec<Option<usize>> = (0..)
            .map(|run| crash_point(args, run, i))
            .take(64)
            .collect();
        orders.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut restarts = 0;
            for crash_at in crashes {
                let handle = Arc::new(Mutex::new(None));
                let crash = Crash::Task(handle.clone());
                let services = services.clone();
                // The task starts once it holds its own abort handle, so a
                // crash point reached at once still cancels it.
                let (ready, start) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(async move {
                    let _ = start.await;
                    order_until_done(&services, i, steps_on, crash_at, &crash).await
                });
                *handle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task.abort_handle());
                let _ = ready.send(());
                match task.await {
                    Ok(Ok(_)) => return Ok(restarts),
                    Ok(Err(error)) => return Err(format!("order {i}: {error}")),
                    Err(cancelled) if cancelled.is_cancelled() => restarts += 1,
                    Err(panicked) => return Err(format!("order {i}: {panicked}")),
                }
            }
            Err(format!("order {i}: crashed on every one of 64 runs"))
        }));
    }
    let mut restarts = 0;
    for order in orders {
        restarts += order.await.map_err(|e| e.to_string())??;
    }
    Ok(restarts)
}

/// On a shared store: worker processes, one at a time, each started again
/// after it crashes, until one finishes every order. Returns the crashes.
async fn processes(args: &Args, worker: &WorkerArgs) -> Result<u64, Failure> {
    let exe = std::env::current_exe()?;
    let bound = args.orders.saturating_mul(20).max(100);
    for run in 0..bound {
        let mut command = tokio::process::Command::new(&exe);
        command
            .args([
                "--worker",
                "--store",
                &args.store,
                "--database",
                &args.database,
            ])
            .args(["--orders", &args.orders.to_string()])
            .args(["--crash-rate", &args.crash_rate.to_string()])
            .args(["--seed", &args.seed.to_string(), "--run", &run.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(["--payments", &worker.payments, "--mail", &worker.mail])
            .args(["--table", &worker.table, "--namespace", &worker.namespace]);
        if args.no_steps {
            command.arg("--no-steps");
        }
        if let (0, Some(point)) = (run, args.sigkill_at) {
            command.args(["--hold-at", &point.to_string()]);
            killed_when_holding(command).await?;
            continue;
        }
        let status = command.status().await?;
        if status.success() {
            return Ok(run);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            if status.signal().is_none() {
                return Err(format!("the worker failed ({status})").into());
            }
        }
    }
    Err(format!("the worker crashed {bound} times in a row").into())
}

/// Starts the worker, and kills it with SIGKILL once it says it holds.
async fn killed_when_holding(mut command: tokio::process::Command) -> Result<(), Failure> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = command.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("the worker's output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if line.starts_with("holding at") {
            child.kill().await?;
            return Ok(());
        }
    }
    Err(format!("the worker ended without holding ({})", child.wait().await?).into())
}

/// The worker process: every order, C at a time, on the shared store; a
/// crash aborts the whole process.
async fn worker(args: &Args) -> Result<ExitCode, Failure> {
    let w = &args.worker;
    let runtime = if args.store.starts_with("redis://") {
        let store = RedisStore::connect(&args.store).await?;
        Idempotency::builder(store)
            .namespace(w.namespace.clone())
            .build()
    } else {
        let store = PostgresStore::connect(&args.store).await?;
        store.migrate().await?;
        Idempotency::builder(store)
            .namespace(w.namespace.clone())
            .build()
    };
    let services = Arc::new(services(runtime, args, w).await?);
    let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let mut orders = Vec::new();
    for i in 0..args.orders {
        let (services, permits, steps_on) = (services.clone(), permits.clone(), !args.no_steps);
        let (crash_at, crash) = match w.hold_at {
            Some(point) if i == 0 => (Some(point), Crash::Hold(point)),
            _ => (crash_point(args, w.run, i), Crash::Process),
        };
        orders.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            order_until_done(&services, i, steps_on, crash_at, &crash).await
        }));
    }
    for (i, order) in orders.into_iter().enumerate() {
        if let Err(error) = order.await? {
            return Err(format!("order {i}: {error}").into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the run did.
struct Tally {
    restarts: u64,
    charges: u64,
    reservations: u64,
    emails: u64,
    duplicates: u64,
    orders_charged: u64,
    orders_reserved: u64,
    orders_emailed: u64,
    /// Orders whose email requests carried more than one reference.
    changed_references: u64,
}

/// Counts the effects: the payments-server's ledger, the reservations
/// table, the mail sink's messages.
async fn count(
    args: &Args,
    payments: &str,
    mail: &str,
    database: &sqlx::PgPool,
    table: &str,
    restarts: u64,
) -> Result<Tally, Failure> {
    let http = default_http_client()?;
    let ledger: Vec<LedgerEntry> = http
        .get(format!("{payments}/payments"))
        .send()
        .await?
        .json()
        .await?;
    let mut per_amount: HashMap<u64, u64> = HashMap::new();
    for entry in &ledger {
        *per_amount.entry(entry.payment.amount).or_default() += 1;
    }
    let orders_charged = (0..args.orders)
        .filter(|&i| per_amount.contains_key(&amount(i)))
        .count() as u64;
    let (reservations, orders_reserved): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT order_id) FROM {table}"
    ))
    .fetch_one(database)
    .await?;
    let emails: HashMap<u64, u64> = http
        .get(format!("{mail}/mail"))
        .send()
        .await?
        .json()
        .await?;
    let references: HashMap<u64, usize> = http
        .get(format!("{mail}/references"))
        .send()
        .await?
        .json()
        .await?;
    let (charges, reservations) = (ledger.len() as u64, reservations as u64);
    let orders_reserved = orders_reserved as u64;
    let email_count: u64 = emails.values().sum();
    let orders_emailed = emails.len() as u64;
    Ok(Tally {
        restarts,
        charges,
        reservations,
        emails: email_count,
        duplicates: charges.saturating_sub(orders_charged)
            + reservations.saturating_sub(orders_reserved)
            + email_count.saturating_sub(orders_emailed),
        orders_charged,
        orders_reserved,
        orders_emailed,
        changed_references: references.values().filter(|&&n| n > 1).count() as u64,
    })
}
