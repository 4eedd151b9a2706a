//! What the layer stores: a response's status, headers and body, in a compact
//! binary form.
//!
//! Layout: `b'H'`, a format version (1), the status (u16), the header count
//! (u16), each header as name length (u16), name, value length (u32), value;
//! then the body, to the end. Big-endian integers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, response};

use super::config::Config;
use crate::engine::Codec;
use crate::{Error, Idempotency, Operation};

const TAG: u8 = b'H';
const VERSION: u8 = 1;

/// What a guarded request produced.
pub(crate) enum Outcome<E, B> {
    /// The handler answered now.
    Fresh(response::Parts, Bytes),
    /// The framework refused the request before any handler ran (a
    /// rejection status without the `Handled` mark): passed on untouched,
    /// not stored (the key is released, so the corrected retry runs).
    Refused(http::Response<B>),
    /// The handler answered now with a body over the response limit, known
    /// before reading it: passed on untouched; a problem is stored instead
    /// if the status is one the layer stores.
    Oversized(http::Response<B>),
    /// The handler's body, with this status, went over the response limit
    /// while it was read: a problem, stored if the status is one the layer
    /// stores.
    OverLimit(StatusCode),
    /// A stored answer.
    Replayed(Stored),
    /// The inner service failed (not stored: the key is released).
    Failed(E),
    /// The handler's response body, with this status, failed half-way: a
    /// problem, stored if the status is one the layer stores.
    BodyFailed(StatusCode, String),
}

/// A decoded stored response.
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Whether a response header is stored. Not stored: the headers that
/// describe one connection or one moment (and those `Connection` names, see
/// [`named_in_connection`]), `Set-Cookie` (a session or other
/// per-user state, which a replay must never hand to another caller of the
/// same scope), and `Idempotent-Replayed` (the layer's own, set on replays).
fn kept(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::CONNECTION
            | header::DATE
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
            | header::SET_COOKIE
            | header::TE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::UPGRADE
    ) && !matches!(name.as_str(), "keep-alive" | "proxy-connection")
        && name.as_str() != super::IDEMPOTENT_REPLAYED
}

/// The headers that `Connection` names: hop-by-hop as well (RFC 9110,
/// section 7.6.1), so not stored either.
fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

pub(crate) fn encode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    // Lengths that do not fit the layout cannot occur with real HTTP stacks
    // (hyper refuses far smaller heads); such headers are left out rather
    // than written wrongly.
    let connection = named_in_connection(headers);
    let kept: Vec<_> = headers
        .iter()
        .filter(|(name, value)| {
            kept(name)
                && !connection.contains(name)
                && name.as_str().len() <= usize::from(u16::MAX)
                && u32::try_from(value.len()).is_ok()
        })
        .take(usize::from(u16::MAX))
        .collect();
    let size = 6 + kept
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size + body.len());
    out.extend_from_slice(&[TAG, VERSION]);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
    for (name, value) in kept {
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, &'static str> {
    let mut input = Reader(bytes);
    match input.take(2)? {
        [TAG, VERSION] => {}
        [TAG, _] => return Err("unknown format version"),
        _ => return Err("not a stored HTTP response"),
    }
    let status = StatusCode::from_u16(input.u16()?).map_err(|_| "invalid status")?;
    let count = input.u16()?;
    // A header takes at least 7 bytes (two lengths and a one-byte name), so
    // a corrupt count cannot ask for more room than the bytes could fill;
    // past `HeaderMap`'s own limit, `with_capacity` and `append` panic.
    let mut headers = HeaderMap::try_with_capacity(usize::from(count).min(input.0.len() / 7))
        .map_err(|_| "too many headers")?;
    for _ in 0..count {
        let len = input.u16()?;
        let name = HeaderName::from_bytes(input.take(usize::from(len))?)
            .map_err(|_| "invalid header name")?;
        let len = input.u32()?;
        let value = HeaderValue::from_bytes(input.take(len as usize)?)
            .map_err(|_| "invalid header value")?;
        headers
            .try_append(name, value)
            .map_err(|_| "too many headers")?;
    }
    Ok(Stored {
        status,
        headers,
        body: Bytes::copy_from_slice(input.0),
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// Stores a fresh response the policy accepts; anything else releases the key.
pub(crate) struct HttpCodec<'a>(pub(crate) &'a Config);

impl HttpCodec<'_> {
    /// The record stored in place of a response over the response limit.
    fn too_large(&self, operation: &Operation, runtime: &Idempotency) -> (Vec<u8>, Duration) {
        let problem = super::problem::response_too_large::<Bytes>(self.0.response_limit);
        self.in_place(problem, operation, runtime)
    }

    /// The record of `problem`, stored in place of a response that cannot be.
    fn in_place(
        &self,
        problem: http::Response<Bytes>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> (Vec<u8>, Duration) {
        let (parts, body) = problem.into_parts();
        (
            encode(parts.status, &parts.headers, &body),
            operation.ttl_on(runtime),
        )
    }
}

impl<E, B> Codec<Outcome<E, B>> for HttpCodec<'_> {
    fn encode(
        &self,
        value: &Outcome<E, B>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error> {
        let stored = |status: StatusCode| self.0.stores(status);
        let (status, headers, body) = match value {
            Outcome::Fresh(parts, body) => (parts.status, &parts.headers, body),
            // The handler ran, but its answer is too large to keep: if it is
            // one the layer stores, this is stored in its place, so that a
            // retry does not run the handler again.
            Outcome::Oversized(response) if stored(response.status()) => {
                return Ok(Some(self.too_large(operation, runtime)));
            }
            Outcome::OverLimit(status) if stored(*status) => {
                return Ok(Some(self.too_large(operation, runtime)));
            }
            Outcome::BodyFailed(status, detail) if stored(*status) => {
                let problem = super::problem::response_failed::<Bytes>(detail, true);
                return Ok(Some(self.in_place(problem, operation, runtime)));
            }
            _ => return Ok(None),
        };
        Ok(stored(status).then(|| (encode(status, headers, body), operation.ttl_on(runtime))))
    }

    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<Outcome<E, B>, Error> {
        decode(bytes)
            .map(Outcome::Replayed)
            .map_err(|detail| Error::Codec {
                action: "decode",
                operation: operation.name().to_owned(),
                detail: format!("the stored HTTP response is corrupt: {detail}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_status_headers_and_body_and_drops_per_connection_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert(
            header::DATE,
            HeaderValue::from_static("Mon, 23 Nov 2026 04:00:00 GMT"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let bytes = encode(StatusCode::CREATED, &headers, b"{\"id\":1}\0\xff");
        let stored = decode(&bytes).unwrap();
        assert_eq!(stored.status, StatusCode::CREATED);
        assert_eq!(stored.body.as_ref(), b"{\"id\":1}\0\xff");
        assert_eq!(stored.headers.len(), 3);
        let multi: Vec<_> = stored.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert!(stored.headers.get(header::DATE).is_none());
        assert!(stored.headers.get(header::CONNECTION).is_none());
    }

    #[test]
    fn corrupt_records_are_errors_never_panics() {
        let good = encode(StatusCode::OK, &HeaderMap::new(), b"body");
        for cut in 0..6 {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"Ox").is_err());
        assert!(decode(&[TAG, 9, 0, 200, 0, 0]).is_err());
        assert!(decode(&[TAG, VERSION, 0, 1, 0, 0]).is_err(), "status 1");
        assert!(decode(&[TAG, VERSION, 0, 200, 0, 1, 0, 1, b' ', 0, 0, 0, 0]).is_err());
        // A header count beyond what `HeaderMap` can hold, with no headers.
        assert!(decode(&[TAG, VERSION, 0, 200, 0xff, 0xff]).is_err());
        let mut many = vec![TAG, VERSION, 0, 200, 0xff, 0xff];
        many.extend(std::iter::repeat_n([0, 1, b'a', 0, 0, 0, 0], 40_000).flatten());
        assert!(
            decode(&many).is_err(),
            "65535 headers announced, 40000 present"
        );
    }
}
