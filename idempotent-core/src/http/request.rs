//! What the layer reads from a request: its key, its body and its
//! fingerprint. Public, so that a handler which runs the engine itself (the
//! PostgreSQL same-transaction mode, say) decides exactly as the layer does.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::grpc::Protocol;
use super::problem::{self, Problem};
use crate::{Fingerprint, IdempotencyKey};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The idempotency key of a request, read from `header` as
/// [`IdempotencyLayer`](super::IdempotencyLayer) reads it: `Ok(None)` when
/// the header is absent, else the key, or the layer's `400` problem answer
/// when the header is sent more than once or the key is malformed (not 1 to
/// 255 visible ASCII characters, or a bad RFC 8941 sf-string).
///
/// ```
/// use http::{HeaderMap, HeaderName};
/// use idempotent_core::http::{IDEMPOTENCY_KEY, read_key};
///
/// let header = HeaderName::from_static(IDEMPOTENCY_KEY);
/// let mut headers = HeaderMap::new();
/// assert!(matches!(read_key::<Vec<u8>>(&headers, &header), Ok(None)));
/// headers.insert(&header, "\"order-42\"".parse().unwrap());
/// let key = read_key::<Vec<u8>>(&headers, &header).unwrap().unwrap();
/// assert_eq!(key.as_str(), "order-42");
/// headers.append(&header, "order-43".parse().unwrap());
/// assert_eq!(read_key::<Vec<u8>>(&headers, &header).unwrap_err().status(), 400);
/// ```
pub fn read_key<B: From<Bytes>>(
    headers: &HeaderMap,
    header: &HeaderName,
) -> Result<Option<IdempotencyKey>, Response<B>> {
    key(headers, header).map_err(|refused| refused.into_response(Protocol::Http))
}

/// [`read_key`], its refusal not rendered yet.
pub(crate) fn key(
    headers: &HeaderMap,
    header: &HeaderName,
) -> Result<Option<IdempotencyKey>, Problem> {
    let mut values = headers.get_all(header).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => {
            let detail = format!("the `{header}` header must be sent once");
            Err(Problem::new(problem::MALFORMED_KEY, detail))
        }
        (Some(value), None) => match value.to_str().map(IdempotencyKey::parse) {
            Ok(Ok(key)) => Ok(Some(key)),
            Ok(Err(error)) => Err(problem::malformed_key(&error)),
            Err(_) => {
                let detail = "the idempotency key must be visible ASCII characters";
                Err(Problem::new(problem::MALFORMED_KEY, detail))
            }
        },
    }
}

/// The body of a request, read as the layer reads it: the layer's `413`
/// problem at once if its `Content-Length` says it is over `limit` bytes,
/// or once it goes over while it is read; its `400` if it cannot be read
/// (the client's connection failed half-way).
///
/// ```
/// use http::HeaderMap;
/// use idempotent_core::http::read_body;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"amount\":100}"));
/// let read = read_body::<_, Vec<u8>>(&HeaderMap::new(), body, 1024).await.unwrap();
/// assert_eq!(&read[..], b"{\"amount\":100}");
/// let large = http_body_util::Full::new(bytes::Bytes::from(vec![0; 2048]));
/// assert_eq!(read_body::<_, Vec<u8>>(&HeaderMap::new(), large, 1024).await.unwrap_err().status(), 413);
/// # }
/// ```
pub async fn read_body<B, R>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, Response<R>>
where
    B: Body,
    B::Error: Into<BoxError>,
    R: From<Bytes>,
{
    match whole_body(headers, body, limit).await {
        Ok((bytes, _trailers)) => Ok(bytes),
        Err(refused) => Err(refused.into_response(Protocol::Http)),
    }
}

/// [`read_body`], with the body's trailers, its refusal not rendered yet.
pub(crate) async fn whole_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), Problem>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(problem::too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            Ok((collected.to_bytes(), trailers))
        }
        Err(error) if error.is::<LengthLimitError>() => Err(problem::too_large(limit)),
        Err(error) => {
            let detail = format!("the request body could not be read: {error}");
            Err(Problem::new(problem::UNREADABLE_BODY, detail))
        }
    }
}

/// The fingerprint of a request as the layer computes it: its method, its
/// path and query as the client sent them, and its body bytes. The same key
/// with another fingerprint is a key reused for another request (`422`).
/// Under axum's `Router::nest`, pass the path the client sent (axum's
/// `OriginalUri`), as the layer does, not the nested route's.
///
/// ```
/// use http::{Method, Uri};
/// use idempotent_core::http::fingerprint;
///
/// let uri: Uri = "/payments?currency=USD".parse().unwrap();
/// let a = fingerprint(&Method::POST, &uri, br#"{"amount":100}"#);
/// assert_eq!(a, fingerprint(&Method::POST, &uri, br#"{"amount":100}"#));
/// assert_ne!(a, fingerprint(&Method::POST, &uri, br#"{"amount": 100}"#));
/// ```
pub fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> Fingerprint {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Fingerprint::from_parts([method.as_str().as_bytes(), path_and_query.as_bytes(), body])
}

/// The request's URI as the client sent it: under axum's `Router::nest`,
/// a nested route sees its path without the prefix (`/transfers` for
/// `/accounts/alice/transfers`), and axum keeps the path the client sent
/// in `OriginalUri` (read with the `axum` feature), so that two nested
/// routes never share keys or replay each other's responses.
pub(crate) fn client_uri(parts: &Parts) -> &Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    &parts.uri
}
