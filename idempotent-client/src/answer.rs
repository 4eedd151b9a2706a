//! Reading a server's answer: whether it says try again, how long it asks
//! us to wait, and whether it is the replay of a stored answer.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header::RETRY_AFTER};

/// The header a server following the IETF draft (and `idempotent-core`'s
/// layer) sets on a replayed answer.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Whether an answer with this status is worth retrying with the same key:
/// 408, 409 (a request with the same key is in progress), 425, 429, 500,
/// 502, 503 and 504. Every other status is final (422, a key reused with a
/// different request, is a bug in the caller, not a reason to retry).
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        408 | 409 | 425 | 429 | 500 | 502 | 503 | 504
    )
}

/// How long the server asked us to wait: `Retry-After` in seconds or as an
/// HTTP date (RFC 9110 §10.2.3), measured from `now` and capped at `cap`.
/// `None` when the header is absent or malformed.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use idempotent_client::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "3".parse().unwrap());
/// let cap = Duration::from_secs(30);
/// assert_eq!(retry_after(&headers, SystemTime::now(), cap), Some(Duration::from_secs(3)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only; a number too large for u64 is "very long": the cap.
        Duration::from_secs(value.parse().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// Whether the server marked the answer as a replay of its stored one
/// (`Idempotent-Replayed: true`).
pub(crate) fn is_replay(headers: &HeaderMap) -> bool {
    headers
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_caps_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        let cap = Duration::from_secs(30);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now, cap)
        };
        assert_eq!(with("5"), Some(Duration::from_secs(5)));
        assert_eq!(with("0"), Some(Duration::ZERO));
        assert_eq!(with("3600"), Some(cap));
        assert_eq!(with("99999999999999999999999"), Some(cap));
        let in_ten = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(with(&in_ten), Some(Duration::from_secs(10)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(with(&past), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(with(""), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now, cap), None);
    }

    #[test]
    fn only_transient_answers_are_retried() {
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 201, 400, 401, 404, 413, 422, 501, 505] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn only_the_replayed_header_set_to_true_marks_a_replay() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(IDEMPOTENT_REPLAYED, value.parse().unwrap());
            is_replay(&headers)
        };
        assert!(with("true"));
        assert!(with("TRUE"));
        assert!(!with("false"));
        assert!(!is_replay(&HeaderMap::new()));
    }
}
