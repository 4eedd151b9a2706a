//! Opening the store a URL names, for its admin operations.

use std::str::FromStr as _;

use idempotent_core::admin::Admin;
use idempotent_core::postgres::PostgresStore;
use idempotent_core::postgres::sqlx::postgres::PgConnectOptions;
use idempotent_core::redis::RedisStore;

use crate::args::StoreArgs;

/// Why no store was opened.
#[derive(Debug)]
pub(crate) struct NoStore(String);

impl std::fmt::Display for NoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoStore {}

/// The store of `args.store`: Redis (standalone, TLS or cluster) or
/// PostgreSQL. Nothing is created or migrated.
pub(crate) async fn open(args: &StoreArgs) -> Result<Box<dyn Admin>, Box<dyn std::error::Error>> {
    let Some(url) = args.store.as_deref() else {
        return Err(NoStore(
            "no store: give --store redis://..., redis+cluster://... or postgres://... \
             (or set IDEMPOTENT_STORE)"
                .to_owned(),
        )
        .into());
    };
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "redis" | "rediss" | "redis+cluster" => {
            let store = RedisStore::builder()
                .url(url)
                .key_prefix(args.key_prefix.as_str())
                .timeout(args.timeout)
                .build()
                .await?;
            Ok(Box::new(store))
        }
        "postgres" | "postgresql" => {
            let options = PgConnectOptions::from_str(url)?;
            Ok(Box::new(PostgresStore::with_options(options, args.timeout)))
        }
        _ => Err(NoStore(format!(
            "unknown store `{url}`: expected redis://..., rediss://..., redis+cluster://... \
             or postgres://..."
        ))
        .into()),
    }
}
