//! The Grafana dashboard (docs/dashboard/idempotent.json) queries the
//! metrics the library exports, all of them, and nothing else: a metric
//! renamed in code and not on the dashboard fails here.

use std::collections::BTreeSet;

use idempotent_consumer::telemetry as consumer;
use idempotent_core::telemetry as core;

#[test]
fn the_dashboard_queries_every_exported_metric_and_no_other() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/dashboard/idempotent.json"
    ))
    .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query");
            for (at, _) in expr.match_indices("idempotent_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                queried.insert(name.trim_end_matches("_bucket").to_owned());
            }
        }
    }
    let exported: BTreeSet<String> = [
        core::EXECUTED,
        core::REPLAYED,
        core::IN_PROGRESS,
        core::KEY_REUSED,
        core::STORE_ERRORS,
        core::STORE_LATENCY,
        core::EVICTED,
        core::PENDING,
        core::LOST,
        core::LOCAL_CACHE,
        core::STEPS_RECORDED,
        core::STEPS_REPLAYED,
        consumer::MESSAGES,
        consumer::DEAD_LETTERED,
        consumer::HANDLER_LATENCY,
        consumer::STORE_WAITS,
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(queried, exported);
}
