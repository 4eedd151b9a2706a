//! A request's intent in the journal: recorded with its key before the first
//! attempt (never its credentials), and checked to belong to the request.

use reqwest::Request;

use crate::error::ClientError;
use crate::journal::{Intent, Journal, now_ms};
use crate::request::IDEMPOTENCY_KEY;

/// Headers never written to the journal: the standard credentials and the
/// common API-key headers (and any value `reqwest` marks sensitive).
const CREDENTIALS: [&str; 7] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
];

/// Records the intent `name` for `request`, carrying `key` if the caller
/// chose one, unless the journal has it already, and returns its key: the
/// journaled one, which must belong to this request
/// ([`ClientError::IntentReused`] otherwise).
pub(crate) async fn record(
    journal: &dyn Journal,
    name: &str,
    request: &Request,
    key: Option<&str>,
) -> Result<String, ClientError> {
    let intent = Intent {
        name: name.to_owned(),
        key: key.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
        method: request.method().to_string(),
        url: without_userinfo(request.url()),
        headers: headers(request)?,
        body: body(request)?.to_vec(),
        created_at_ms: now_ms(),
        done: false,
        answered_at_ms: 0,
    };
    let recorded = journal.begin(intent).await?;
    if !is_request_of(&recorded, request)? {
        return Err(ClientError::IntentReused {
            intent: recorded.name,
            key: recorded.key,
        });
    }
    Ok(recorded.key)
}

/// The headers to journal: all but credentials and the key.
fn headers(request: &Request) -> Result<Vec<(String, String)>, ClientError> {
    let mut kept = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let name = name.as_str();
        if value.is_sensitive() || CREDENTIALS.contains(&name) || name == IDEMPOTENCY_KEY {
            continue;
        }
        // UTF-8 (a name with an accent) is kept: it is sent again as the
        // same bytes. Other bytes cannot be journaled as text.
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|error| ClientError::InvalidRequest {
                reason: format!(
                    "the `{name}` header is not UTF-8, and a journaled request is resent byte \
                     for byte"
                ),
                source: Some(Box::new(error)),
            })?;
        kept.push((name.to_owned(), value.to_owned()));
    }
    Ok(kept)
}

/// The body's bytes; a streaming body has none to journal or resend.
pub(crate) fn body(request: &Request) -> Result<&[u8], ClientError> {
    match request.body() {
        None => Ok(&[]),
        Some(body) => body.as_bytes().ok_or_else(|| ClientError::InvalidRequest {
            reason: "a streaming body cannot be journaled and sent again: buffer it".to_owned(),
            source: None,
        }),
    }
}

/// Whether `intent` was journaled for `request`: the same method, path and
/// query, and body, what a server fingerprints (the layer of
/// `idempotent-core` does). The scheme, host and port may change (a server
/// moved, `localhost` for `127.0.0.1`), and so may headers (a trace id, a
/// fresh credential).
fn is_request_of(intent: &Intent, request: &Request) -> Result<bool, ClientError> {
    Ok(intent.method == request.method().as_str()
        && path_and_query_of(&intent.url) == path_and_query(request.url())
        && intent.body == body(request)?)
}

/// The path and query of a journaled URL, or the URL itself if it does not parse.
fn path_and_query_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => path_and_query(&parsed),
        Err(_) => url.to_owned(),
    }
}

fn path_and_query(url: &reqwest::Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// The URL to journal: a password or user name in it (`https://user:secret@host/`)
/// is a credential, and is left out like the credential headers.
fn without_userinfo(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Both succeed on a URL that has a host, which one with userinfo has.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    url.into()
}
