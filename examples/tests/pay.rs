//! `pay` killed with SIGKILL half-way and started again on the same journal
//! finishes the batch with exactly one charge per payment: through the
//! client, and through a reqwest-middleware stack.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use examples::payments::LedgerEntry;
use support::{ServerProcess, binary, http_client};

const COUNT: usize = 200;

async fn ledger(base: &str) -> Vec<LedgerEntry> {
    http_client()
        .get(format!("{base}/payments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_killed_half_way_and_restarted_charges_each_payment_once() {
    killed_and_restarted("client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_through_a_middleware_stack_killed_and_restarted_charges_each_payment_once() {
    killed_and_restarted("middleware").await;
}

/// Runs `pay --via <via>`, kills it half-way, runs it again on the same
/// journal, and checks the ledger.
async fn killed_and_restarted(via: &str) {
    let server = ServerProcess::start("memory");
    let dir = std::env::temp_dir().join(format!("idempotent-pay-{via}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("pay.journal");
    let pay = || {
        let mut command = Command::new(binary("pay"));
        command
            .args(["--url", &server.base, "--count", &COUNT.to_string()])
            .args([
                "--concurrency",
                "4",
                "--intent-prefix",
                "batch",
                "--via",
                via,
            ])
            .arg("--journal")
            .arg(&journal)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    };

    let mut first = pay().spawn().expect("start pay");
    // Kill it once some payments went through, in the middle of the batch.
    let started = Instant::now();
    loop {
        let charged = ledger(&server.base).await.len();
        if charged >= 30 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pay made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("SIGKILL pay");
    first.wait().unwrap();
    let at_kill = ledger(&server.base).await.len();
    assert!(at_kill < COUNT, "killed before the end ({at_kill} charges)");

    let second = pay().output().expect("run pay again");
    let summary = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{summary}");
    assert!(summary.contains(&format!("succeeded {COUNT}")), "{summary}");
    // Every payment charged before the kill comes back as a replay.
    let replayed: usize = summary
        .split("(replayed ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no replayed count: {summary}"));
    assert!(
        (at_kill..=COUNT).contains(&replayed),
        "{summary} ({at_kill} charged before the kill)"
    );
    // The intents in flight at the kill (at most the 4 sent at once) were
    // left pending, and this run resumed them.
    let resumed: usize = summary
        .split("resumed ")
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resumed count: {summary}"));
    assert!(resumed <= 4, "{summary}");

    let mut per_key: HashMap<String, usize> = HashMap::new();
    for entry in ledger(&server.base).await {
        *per_key.entry(entry.idempotency_key.unwrap()).or_default() += 1;
    }
    assert_eq!(per_key.len(), COUNT, "every payment was charged");
    assert!(
        per_key.values().all(|&n| n == 1),
        "no payment was charged twice"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
