//! Through a real fault-injecting proxy: 500 intents, 30% of responses
//! dropped after the server handled them, 10% of connections reset.

use std::time::Duration;

use examples::fault_proxy::Faults;
use examples::scenario::run;

const FAULTS: Faults = Faults {
    drop_response: 0.30,
    reset: 0.10,
    max_delay: Duration::from_millis(5),
    seed: 42,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_intents_through_faults_charge_exactly_five_hundred_times() {
    let run = run(500, 16, FAULTS, true).await;
    assert_eq!(run.succeeded, 500, "{run:?}");
    assert_eq!(run.charges, 500, "{run:?}");
    assert_eq!(run.duplicates, 0, "{run:?}");
    assert_eq!(
        run.wrong_receipts, 0,
        "every caller holds its one charge: {run:?}"
    );
    assert!(
        run.attempts > 500,
        "the faults made the client retry: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_faults_without_idempotency_charge_twice() {
    // The control: the faults are real, and they do cause duplicates.
    let run = run(200, 16, FAULTS, false).await;
    assert!(run.duplicates > 0, "{run:?}");
    assert!(run.charges > 200, "{run:?}");
}
