//! What the layer stores: a response's status, headers, body and trailers,
//! in a compact binary form.
//!
//! Layout: `b'H'`, a format version, the status (u16), the header count
//! (u16), each header as name length (u16), name, value length (u32), value;
//! in version 2 only, the trailer count (u16) and each trailer as a header;
//! then the body, to the end. Big-endian integers. A response without
//! trailers is written in version 1, which the layers of earlier releases
//! read too (a rolling upgrade keeps replaying); one with trailers (a gRPC
//! answer's `grpc-status`) in version 2.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, response};

use super::config::Config;
use super::grpc::Protocol;
use super::header::IDEMPOTENT_REPLAYED;
use super::problem::{self, Problem};
use crate::engine::Codec;
use crate::{Error, Idempotency, Operation};

const TAG: u8 = b'H';
/// Status, headers and body.
const VERSION: u8 = 1;
/// Status, headers, trailers and body.
const VERSION_TRAILERS: u8 = 2;

/// What a guarded request produced.
pub(crate) enum Outcome<E, B> {
    /// The handler answered now: its head, body and trailers.
    Fresh(response::Parts, Bytes, Option<HeaderMap>),
    /// The framework refused the request before any handler ran (a
    /// rejection status without the `Handled` mark): passed on untouched,
    /// not stored (the key is released, so the corrected retry runs).
    Refused(http::Response<B>),
    /// The handler answered now with a body over the response limit, known
    /// before reading it: passed on untouched; a problem is stored instead
    /// if `stored` (its head says it is an answer the layer stores).
    Oversized {
        response: http::Response<B>,
        stored: bool,
    },
    /// The handler's body went over the response limit while it was read:
    /// a problem, stored if `stored` (its head says it is an answer the
    /// layer stores).
    OverLimit { stored: bool },
    /// A stored answer.
    Replayed(Stored),
    /// The inner service failed (not stored: the key is released).
    Failed(E),
    /// The handler's response body failed half-way: a problem, stored if
    /// `stored` (its head says it is an answer the layer stores).
    BodyFailed { stored: bool, detail: String },
}

/// A decoded stored response.
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
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
        && name.as_str() != IDEMPOTENT_REPLAYED
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

/// A record of a response without trailers (version 1).
pub(crate) fn encode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    encode_with_trailers(status, headers, None, body)
}

/// A record of a response: version 2 if it has trailers, else version 1.
pub(crate) fn encode_with_trailers(
    status: StatusCode,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Vec<u8> {
    let headers = kept_fields(headers);
    let trailers = trailers.map(kept_fields).filter(|kept| !kept.is_empty());
    let size = |fields: &[(&HeaderName, &HeaderValue)]| {
        2 + fields
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum::<usize>()
    };
    let trailers_size = trailers.as_deref().map_or(0, size);
    let mut out = Vec::with_capacity(4 + size(&headers) + trailers_size + body.len());
    let version = if trailers.is_some() {
        VERSION_TRAILERS
    } else {
        VERSION
    };
    out.extend_from_slice(&[TAG, version]);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    write_fields(&mut out, &headers);
    if let Some(trailers) = &trailers {
        write_fields(&mut out, trailers);
    }
    out.extend_from_slice(body);
    out
}

/// The fields of `map` that are stored (see [`kept`]), at most as many as
/// the layout counts.
fn kept_fields(map: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
    // Lengths that do not fit the layout cannot occur with real HTTP stacks
    // (hyper refuses far smaller heads); such fields are left out rather
    // than written wrongly.
    let connection = named_in_connection(map);
    map.iter()
        .filter(|(name, value)| {
            kept(name)
                && !connection.contains(name)
                && name.as_str().len() <= usize::from(u16::MAX)
                && u32::try_from(value.len()).is_ok()
        })
        .take(usize::from(u16::MAX))
        .collect()
}

/// A count (u16), then each field as name length (u16), name, value length
/// (u32), value.
fn write_fields(out: &mut Vec<u8>, fields: &[(&HeaderName, &HeaderValue)]) {
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (name, value) in fields {
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Stored, &'static str> {
    let mut input = Reader(bytes);
    let with_trailers = match input.take(2)? {
        [TAG, VERSION] => false,
        [TAG, VERSION_TRAILERS] => true,
        [TAG, _] => return Err("unknown format version"),
        _ => return Err("not a stored HTTP response"),
    };
    let status = StatusCode::from_u16(input.u16()?).map_err(|_| "invalid status")?;
    let headers = input.fields()?;
    let trailers = if with_trailers {
        Some(input.fields()?)
    } else {
        None
    };
    Ok(Stored {
        status,
        headers,
        body: Bytes::copy_from_slice(input.0),
        trailers,
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

    /// A count of fields, then the fields (see [`write_fields`]).
    fn fields(&mut self) -> Result<HeaderMap, &'static str> {
        let count = self.u16()?;
        // A field takes at least 7 bytes (two lengths and a one-byte name),
        // so a corrupt count cannot ask for more room than the bytes could
        // fill; past `HeaderMap`'s own limit, `with_capacity` and `append`
        // panic. One more: a replay adds `Idempotent-Replayed`, which would
        // otherwise grow (and rehash) a full map on every replay.
        let room = usize::from(count).min(self.0.len() / 7) + 1;
        let mut fields = HeaderMap::try_with_capacity(room).map_err(|_| "too many headers")?;
        for _ in 0..count {
            let len = self.u16()?;
            let name = HeaderName::from_bytes(self.take(usize::from(len))?)
                .map_err(|_| "invalid header name")?;
            let len = self.u32()?;
            let value = HeaderValue::from_bytes(self.take(len as usize)?)
                .map_err(|_| "invalid header value")?;
            fields
                .try_append(name, value)
                .map_err(|_| "too many headers")?;
        }
        Ok(fields)
    }
}

/// Stores a fresh response the policy accepts; anything else releases the key.
pub(crate) struct HttpCodec<'a> {
    pub(crate) config: &'a Config,
    /// How the request is answered: what is stored in place of a response
    /// that cannot be is a problem document, or a gRPC status.
    pub(crate) protocol: Protocol,
}

impl HttpCodec<'_> {
    /// The record of `problem`, stored in place of a response that cannot be.
    fn in_place(
        &self,
        problem: Problem,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> (Vec<u8>, Duration) {
        let (parts, body) = problem.into_response::<Bytes>(self.protocol).into_parts();
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
        let too_large = || problem::response_too_large(self.config.response_limit, true);
        Ok(match value {
            // Read whole: its trailers are known, if only to be none.
            Outcome::Fresh(parts, body, trailers) => self
                .config
                .stores_answer(
                    parts.status,
                    &parts.headers,
                    Some(trailers.as_ref().unwrap_or(&HeaderMap::new())),
                    self.protocol,
                )
                .then(|| {
                    let record =
                        encode_with_trailers(parts.status, &parts.headers, trailers.as_ref(), body);
                    (record, operation.ttl_on(runtime))
                }),
            // The handler ran, but its answer is too large to keep, or
            // failed half-way: if it is one the layer stores, a problem is
            // stored in its place, so that a retry does not run the handler
            // again.
            Outcome::Oversized { stored: true, .. } | Outcome::OverLimit { stored: true } => {
                Some(self.in_place(too_large(), operation, runtime))
            }
            Outcome::BodyFailed {
                stored: true,
                detail,
            } => Some(self.in_place(problem::response_failed(detail, true), operation, runtime)),
            _ => None,
        })
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
    fn trailers_are_kept_in_version_2_and_version_1_stays_without() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let plain = encode_with_trailers(StatusCode::OK, &headers, None, b"m");
        assert_eq!(plain[1], VERSION, "no trailers: the earlier format");
        let empty = encode_with_trailers(StatusCode::OK, &headers, Some(&HeaderMap::new()), b"m");
        assert_eq!(empty, plain);
        assert!(decode(&plain).unwrap().trailers.is_none());

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.append("x-audit", HeaderValue::from_static("a"));
        trailers.append("x-audit", HeaderValue::from_static("b"));
        trailers.insert(header::DATE, HeaderValue::from_static("now"));
        let bytes = encode_with_trailers(StatusCode::OK, &headers, Some(&trailers), b"\0\0m");
        assert_eq!(bytes[1], VERSION_TRAILERS);
        let stored = decode(&bytes).unwrap();
        assert_eq!(stored.headers, headers);
        assert_eq!(stored.body.as_ref(), b"\0\0m");
        let kept = stored.trailers.unwrap();
        assert_eq!(kept["grpc-status"], "0");
        let audit: Vec<_> = kept.get_all("x-audit").iter().collect();
        assert_eq!(audit, ["a", "b"]);
        assert!(
            kept.get(header::DATE).is_none(),
            "per-moment trailers go too"
        );
        for cut in 0..bytes.len() - 3 {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_records_are_errors_never_panics() {
        let good = encode(StatusCode::OK, &HeaderMap::new(), b"body");
        for cut in 0..6 {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"Ox").is_err());
        assert!(decode(&[TAG, 9, 0, 200, 0, 0]).is_err());
        assert!(
            decode(&[TAG, VERSION_TRAILERS, 0, 200, 0, 0]).is_err(),
            "no trailer count"
        );
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
