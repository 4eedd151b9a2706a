//! gRPC: how a gRPC caller is told what the layer decided (a status, not a
//! problem document), and which of a gRPC service's answers are stored.
//!
//! A gRPC call is an HTTP/2 `POST` whose `content-type` is
//! `application/grpc` (or `application/grpc+proto`, `application/grpc-web`,
//! ...): the layer guards it like any other request, keyed by the
//! `idempotency-key` metadata entry. Its answers are "trailers-only"
//! responses: HTTP `200` with `grpc-status`, `grpc-message` and
//! `grpc-status-details-bin` (a `google.rpc.Status` with an `ErrorInfo`, and
//! a `RetryInfo` when the caller should come back) in the headers, as gRPC
//! servers answer an error.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

/// How a request wants to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// An HTTP request: problem documents, HTTP statuses.
    Http,
    /// A gRPC call: gRPC statuses.
    Grpc,
}

impl Protocol {
    /// gRPC for a request whose `content-type` starts with
    /// `application/grpc`, HTTP for any other.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let grpc = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.get(..16))
            .is_some_and(|start| start.eq_ignore_ascii_case("application/grpc"));
        if grpc { Self::Grpc } else { Self::Http }
    }
}

/// A gRPC status code: the numbers of `google.rpc.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(u32);

impl Code {
    pub(crate) const INVALID_ARGUMENT: Self = Self(3);
    pub(crate) const RESOURCE_EXHAUSTED: Self = Self(8);
    pub(crate) const FAILED_PRECONDITION: Self = Self(9);
    pub(crate) const ABORTED: Self = Self(10);
    pub(crate) const INTERNAL: Self = Self(13);
    pub(crate) const UNAVAILABLE: Self = Self(14);
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// The delay gRPC's own retry policies read from a server.
const GRPC_RETRY_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The `domain` of the `google.rpc.ErrorInfo` in the layer's statuses.
const DOMAIN: &str = "idempotent";

/// The status of a gRPC answer: its `grpc-status`, in its trailers or, for
/// a trailers-only answer, in its headers; `None` when neither has one that
/// parses (the trailers were not read, or the answer is not gRPC).
pub(crate) fn status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u32> {
    trailers
        .and_then(|trailers| trailers.get(GRPC_STATUS))
        .or_else(|| headers.get(GRPC_STATUS))
        .and_then(|value| value.to_str().ok()?.parse().ok())
}

/// Whether a gRPC answer with status `code` is stored, the gRPC rule that
/// mirrors HTTP's "final answers only": `OK` and the errors that say the
/// request itself is wrong (`INVALID_ARGUMENT`, `NOT_FOUND`,
/// `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`,
/// `OUT_OF_RANGE`, `UNAUTHENTICATED`). Never those that say "try again" or
/// that the server failed (`CANCELLED`, `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL`, `UNAVAILABLE`,
/// `DATA_LOSS`), nor `UNIMPLEMENTED`, which a gRPC server answers for a
/// method it does not have, before any handler runs: the key is released and
/// a retry runs the handler.
pub(crate) fn stored(code: u32) -> bool {
    matches!(code, 0 | 3 | 5 | 6 | 7 | 9 | 11 | 16)
}

/// A trailers-only gRPC answer: `code`, `message`, and in
/// `grpc-status-details-bin` a `google.rpc.Status` with an `ErrorInfo` whose
/// `reason` is `reason` and, given `retry_after`, a `RetryInfo` (also said
/// in `grpc-retry-pushback-ms`).
pub(crate) fn status_response<B: From<Bytes>>(
    code: Code,
    reason: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(code.0));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    let details = status_details(code, reason, message, retry_after);
    if let Ok(details) = HeaderValue::from_str(&base64(&details)) {
        headers.insert(GRPC_STATUS_DETAILS, details);
    }
    if let Some(after) = retry_after {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        headers.insert(GRPC_RETRY_PUSHBACK, HeaderValue::from(millis));
    }
    response
}

/// `grpc-message`: the gRPC spec's percent-encoding of UTF-8 bytes (all
/// but visible ASCII and space, and `%` itself).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A binary metadata value: standard base64, unpadded (what gRPC sends).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The protobuf encoding of a `google.rpc.Status` with an `ErrorInfo` (and
/// a `RetryInfo`), written by hand: three small messages do not call for a
/// protobuf library in the core crate.
fn status_details(
    code: Code,
    reason: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> Vec<u8> {
    // google.rpc.ErrorInfo { reason = 1; domain = 2; }
    let mut error_info = Vec::new();
    message_field(&mut error_info, 1, reason.as_bytes());
    message_field(&mut error_info, 2, DOMAIN.as_bytes());
    let mut status = Vec::new();
    // google.rpc.Status { code = 1; message = 2; repeated Any details = 3; }
    varint_field(&mut status, 1, u64::from(code.0));
    message_field(&mut status, 2, message.as_bytes());
    message_field(
        &mut status,
        3,
        &any("type.googleapis.com/google.rpc.ErrorInfo", &error_info),
    );
    if let Some(after) = retry_after {
        // google.protobuf.Duration { seconds = 1; nanos = 2; }
        let mut duration = Vec::new();
        if after.as_secs() > 0 {
            varint_field(&mut duration, 1, after.as_secs());
        }
        if after.subsec_nanos() > 0 {
            varint_field(&mut duration, 2, u64::from(after.subsec_nanos()));
        }
        // google.rpc.RetryInfo { Duration retry_delay = 1; }
        let mut retry_info = Vec::new();
        message_field(&mut retry_info, 1, &duration);
        message_field(
            &mut status,
            3,
            &any("type.googleapis.com/google.rpc.RetryInfo", &retry_info),
        );
    }
    status
}

/// A `google.protobuf.Any { type_url = 1; value = 2; }`.
fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut any = Vec::new();
    message_field(&mut any, 1, type_url.as_bytes());
    message_field(&mut any, 2, value);
    any
}

/// A length-delimited field (a string, bytes, or a message).
fn message_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field; zero is the default, and proto3 leaves it out.
fn varint_field(out: &mut Vec<u8>, field: u8, value: u64) {
    if value != 0 {
        out.push(field << 3);
        varint(out, value);
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_by_the_content_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(Protocol::of(&headers), Protocol::Http);
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
            "application/grpc-web+proto",
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(grpc));
            assert_eq!(Protocol::of(&headers), Protocol::Grpc, "{grpc}");
        }
        for http in ["application/json", "application/gr", "text/plain"] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(http));
            assert_eq!(Protocol::of(&headers), Protocol::Http, "{http}");
        }
    }

    #[test]
    fn a_status_is_read_from_the_trailers_first_then_the_headers() {
        let mut headers = HeaderMap::new();
        let mut trailers = HeaderMap::new();
        assert_eq!(status(&headers, Some(&trailers)), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("9"));
        assert_eq!(status(&headers, None), Some(9), "trailers-only");
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(status(&headers, Some(&trailers)), Some(0));
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status(&HeaderMap::new(), Some(&trailers)), None);
    }

    #[test]
    fn final_answers_are_stored_and_try_again_answers_are_not() {
        let stored_codes: Vec<u32> = (0..=16).filter(|&code| stored(code)).collect();
        assert_eq!(stored_codes, [0, 3, 5, 6, 7, 9, 11, 16]);
    }

    #[test]
    fn messages_are_percent_encoded_and_details_base64_encoded() {
        assert_eq!(percent_encode("a 100% café"), "a 100%25 caf%C3%A9");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob\xff"), "Zm9vYv8");
    }

    #[test]
    fn details_are_a_google_rpc_status_with_error_info_and_retry_info() {
        let details = status_details(Code::ABORTED, "R", "m", Some(Duration::from_millis(1500)));
        let error_info = [0x0a, 1, b'R', 0x12, 10]
            .into_iter()
            .chain(*b"idempotent")
            .collect::<Vec<u8>>();
        let retry_info = [0x0a, 8, 0x08, 1, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01];
        let mut expected = vec![0x08, 10, 0x12, 1, b'm'];
        for (url, value) in [
            ("type.googleapis.com/google.rpc.ErrorInfo", &error_info[..]),
            ("type.googleapis.com/google.rpc.RetryInfo", &retry_info[..]),
        ] {
            expected.push(0x1a);
            expected.push((2 + url.len() + 2 + value.len()) as u8);
            expected.extend([0x0a, url.len() as u8]);
            expected.extend(url.bytes());
            expected.extend([0x12, value.len() as u8]);
            expected.extend(value);
        }
        assert_eq!(details, expected);
    }

    #[test]
    fn an_answer_is_trailers_only() {
        let response: Response<Bytes> = status_response(
            Code::UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "down",
            Some(Duration::from_secs(1)),
        );
        assert_eq!(response.status(), 200);
        assert!(response.body().is_empty());
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[GRPC_STATUS], "14");
        assert_eq!(headers[GRPC_MESSAGE], "down");
        assert_eq!(headers[GRPC_RETRY_PUSHBACK], "1000");
        assert!(headers.contains_key(GRPC_STATUS_DETAILS));
    }
}
