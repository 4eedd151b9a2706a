//! The command line, parsed by clap.

use std::time::Duration;

use clap::{Parser, Subcommand};
use idempotent_core::record::StorageKey;
use idempotent_core::{DEFAULT_NAMESPACE, IdempotencyKey, KeyError};

/// Inspect and evict idempotency records, list stuck work, count records.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the records are.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The store: redis://HOST:PORT, rediss://..., redis+cluster://HOST:PORT[,HOST:PORT...],
    /// or postgres://USER@HOST/DATABASE.
    #[arg(long, env = "IDEMPOTENT_STORE", global = true)]
    pub(crate) store: Option<String>,
    /// Redis: the key prefix the service's store was built with.
    #[arg(long, default_value = "", global = true)]
    pub(crate) key_prefix: String,
    /// The bound on each call to the store.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the record of a key: its state, fingerprint, lease owner and
    /// expiry, and the size of its response.
    Inspect {
        #[command(flatten)]
        record: RecordArgs,
        /// Print the stored response too (it may hold personal data).
        #[arg(long)]
        show_body: bool,
    },
    /// Delete the record of a key, so that the next call with it runs again.
    Evict {
        #[command(flatten)]
        record: RecordArgs,
        /// Evict a record in progress too; its owner can no longer store its result.
        #[arg(long)]
        force: bool,
    },
    /// List the records in progress for at least a while, longest first.
    Stuck {
        /// How long a record has been in progress, at least: 500ms, 30s, 5m, 1h, 2d.
        #[arg(long, default_value = "30s")]
        older_than: Bound,
        /// How many records to list at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Count the live records of each operation, in progress and completed.
    Stats,
}

/// The four parts of a record's key.
#[derive(Debug, clap::Args)]
pub(crate) struct RecordArgs {
    /// The runtime's namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The scope (tenant) of the key; empty for none.
    #[arg(long, default_value = "")]
    scope: String,
    /// The operation: the function's `name`, or for the HTTP layer the
    /// method and path ("POST /payments"); `stuck` lists them.
    #[arg(long)]
    operation: String,
    /// The idempotency key.
    key: String,
}

impl RecordArgs {
    pub(crate) fn storage_key(&self) -> Result<StorageKey, KeyError> {
        let key = IdempotencyKey::parse(&self.key)?;
        Ok(StorageKey::new(
            &self.namespace,
            &self.scope,
            &self.operation,
            &key,
        ))
    }
}

/// A duration given on the command line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound(pub(crate) Duration);

impl std::str::FromStr for Bound {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Self)
    }
}

/// `<number><unit>`, the unit one of `ms`, `s`, `m`, `h`, `d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: expected a number and a unit (ms, s, m, h, d), like 30s"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}`: expected a number and a unit (ms, s, m, h, d), like 30s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_a_number_and_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "30 s",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}
