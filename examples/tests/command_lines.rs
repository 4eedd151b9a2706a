//! The examples' command lines follow conventions: `--help` and `--version`
//! on stdout with exit 0, every option described with its default, `--flag=value`
//! as well as `--flag value`, and a bad argument refused with exit 2.

mod support;

use std::process::{Command, Output};

use support::{ServerProcess, binary, http_client};

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

#[test]
fn help_and_version_print_on_stdout_and_exit_zero() {
    for (name, defaults) in [
        (
            "payments-server",
            &[
                "[default: 127.0.0.1:3000]",
                "[default: memory]",
                "[default: 100000]",
            ][..],
        ),
        (
            "pay",
            &[
                "[default: 100]",
                "[default: 8]",
                "[default: pay.journal]",
                "[default: payment]",
            ][..],
        ),
        (
            "grpc-server",
            &["[default: 127.0.0.1:50051]", "[default: memory]"][..],
        ),
        (
            "checkout",
            &[
                "[default: memory]",
                "[default: 200]",
                "[default: 0.2]",
                "--no-steps",
            ][..],
        ),
        (
            "orders-producer",
            &[
                "[default: orders]",
                "[default: 1000]",
                "[default: 0.1]",
                "[default: order]",
            ][..],
        ),
        (
            "orders-consumer",
            &[
                "[default: orders]",
                "[default: memory]",
                "--no-dedup",
                "--exit-when-idle",
                "--work-ms",
            ][..],
        ),
    ] {
        let help = run(name, &["--help"]);
        assert_eq!(help.status.code(), Some(0), "{name} --help");
        let text = String::from_utf8(help.stdout).unwrap();
        assert!(text.contains(&format!("Usage: {name}")), "{name}: {text}");
        for default in defaults {
            assert!(
                text.contains(default),
                "{name} --help shows {default}: {text}"
            );
        }
        let version = run(name, &["--version"]);
        assert_eq!(version.status.code(), Some(0), "{name} --version");
        assert_eq!(
            String::from_utf8(version.stdout).unwrap().trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn a_bad_argument_is_refused_with_exit_2_and_says_why() {
    for (name, args, says) in [
        ("payments-server", &["--bogus"][..], "--bogus"),
        (
            "payments-server",
            &["--store", "mysql://x"][..],
            "unknown store",
        ),
        ("pay", &["--url", "ftp://x"][..], "not an http(s) URL"),
        ("pay", &[][..], "--url"),
        (
            "pay",
            &["--url", "http://127.0.0.1:1", "--concurrency", "0"][..],
            "--concurrency",
        ),
        ("checkout", &["--crash-rate", "1.5"][..], "a chance from 0"),
        (
            "checkout",
            &["--store", "mysql://x"][..],
            "expected `memory`",
        ),
        (
            "orders-producer",
            &["--broker", "kafka://x"][..],
            "expected nats://",
        ),
        ("orders-producer", &[][..], "--broker"),
        (
            "orders-producer",
            &["--broker", "nats://127.0.0.1:1", "--duplicates", "2"][..],
            "a share from 0 to 1",
        ),
        (
            "orders-consumer",
            &["--broker", "nats://127.0.0.1:1", "--store", "mysql://x"][..],
            "expected `memory`",
        ),
    ] {
        let refused = run(name, args);
        assert_eq!(refused.status.code(), Some(2), "{name} {args:?}");
        let stderr = String::from_utf8(refused.stderr).unwrap();
        assert!(stderr.contains(says), "{name} {args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_option_and_its_value_may_be_joined_by_an_equals_sign() {
    let server = ServerProcess::with_args(&["--addr=127.0.0.1:0", "--store=memory", "--work-ms=0"]);
    let answer = http_client()
        .get(format!("{}/payments", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}
