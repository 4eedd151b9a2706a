//! The fuzz targets' entry points: every input path that reads bytes from
//! outside the process (a key, a header, a stored record of each store)
//! with the invariants it must keep. Not public API: `fuzz/` (cargo-fuzz)
//! and `tests/fuzz_corpus.rs` (the committed corpus, replayed by
//! `cargo test`) call them.
//!
//! Each takes any bytes and panics only when an invariant breaks: that is
//! what the fuzzer looks for. Decoders must answer a value or an error,
//! never panic, whatever they are given.

use crate::engine::{Codec as _, Operation, ResultCodec, replay};
use crate::key::{IdempotencyKey, KeyError, MAX_KEY_LEN, StorageKey};

/// Key parsing: any text is a key or a [`KeyError`]. A key is 1 to 255
/// visible ASCII characters, and reads back as itself as a bare token.
pub fn key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        IdempotencyKey::parse(text),
        IdempotencyKey::from_token(text),
    ] {
        let Ok(key) = parsed else { continue };
        let bytes = key.as_str().as_bytes();
        assert!(
            (1..=MAX_KEY_LEN).contains(&bytes.len()),
            "length {}",
            bytes.len()
        );
        assert!(bytes.iter().all(|b| (0x21..=0x7E).contains(b)), "{key:?}");
        assert_eq!(IdempotencyKey::from_token(key.as_str()).as_ref(), Ok(&key));
    }
    if text.is_empty() {
        assert_eq!(IdempotencyKey::parse(text), Err(KeyError::Empty));
    }
}

/// Storage keys: two different (namespace, scope, operation) tuples with
/// one key never make the same storage key. `data` holds two tuples'
/// parts, separated by `0xFF`.
pub fn storage_key(data: &[u8]) {
    let key = IdempotencyKey::from_token("k").expect("a valid key");
    let mut parts = data.split(|&b| b == 0xFF).map(String::from_utf8_lossy);
    let mut tuple = || {
        let mut next = || parts.next().unwrap_or_default().into_owned();
        (next(), next(), next())
    };
    let (a, b) = (tuple(), tuple());
    let storage = |(namespace, scope, operation): &(String, String, String)| {
        StorageKey::new(namespace, scope, operation, &key)
    };
    assert_eq!(a == b, storage(&a) == storage(&b), "{a:?} {b:?}");
    #[cfg(feature = "postgres")]
    {
        let stored = storage(&a);
        let (namespace, scope, operation, k) = stored.parts();
        assert_eq!((namespace, scope, operation, k), (&*a.0, &*a.1, &*a.2, "k"));
    }
}

/// The `Idempotency-Key` header as the HTTP layer reads it: any value, sent
/// once or twice (`0xFF` between the two), is a key, absent, or a `400`.
#[cfg(feature = "http")]
pub fn header(data: &[u8]) {
    use http::{HeaderMap, HeaderName, HeaderValue};

    let name = HeaderName::from_static(crate::http::IDEMPOTENCY_KEY);
    let (first, second) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(first) = HeaderValue::from_bytes(first) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(&name, first.clone());
    match crate::http::read_key::<Vec<u8>>(&headers, &name) {
        Ok(Some(key)) => {
            let text = first.to_str().expect("a key is read from visible ASCII");
            assert_eq!(IdempotencyKey::parse(text).as_ref(), Ok(&key));
        }
        Ok(None) => panic!("a header that is present is never absent"),
        Err(refused) => assert_eq!(refused.status(), 400),
    }
    if let Ok(second) = HeaderValue::from_bytes(second) {
        headers.append(&name, second);
        let twice = crate::http::read_key::<Vec<u8>>(&headers, &name);
        assert!(
            twice.is_err_and(|refused| refused.status() == 400),
            "a key sent twice is refused"
        );
    }
}

/// A stored HTTP response (either record version): decoded or refused,
/// never a panic; what decodes encodes again, trailers included, to a
/// record that decodes, and encodes to the same bytes.
#[cfg(feature = "http")]
pub fn http_record(data: &[u8]) {
    use crate::http::codec::{decode, encode_with_trailers};

    let Ok(stored) = decode(data) else { return };
    let trailers = stored.trailers.as_ref();
    let once = encode_with_trailers(stored.status, &stored.headers, trailers, &stored.body);
    let again = decode(&once).expect("an encoded response decodes");
    assert_eq!((again.status, &again.body), (stored.status, &stored.body));
    let twice = encode_with_trailers(
        again.status,
        &again.headers,
        again.trailers.as_ref(),
        &again.body,
    );
    assert_eq!(twice, once, "a decoded record encodes to the same bytes");
}

/// A Redis record value: a record or [`StoreError::Corrupt`](crate::StoreError::Corrupt).
#[cfg(feature = "redis")]
pub fn redis_record(data: &[u8]) {
    use crate::record::RecordState;

    let key = StorageKey::new(
        "ns",
        "",
        "op",
        &IdempotencyKey::from_token("k").expect("valid"),
    );
    // Layout 1 has no version marker; layout 2 starts with its version.
    let body = match data.first() {
        Some(&crate::record::LAYOUT) => &data[1..],
        _ => data,
    };
    match crate::store::decode_redis_value(&key, data.to_vec()) {
        Ok(record) => match record.state {
            RecordState::InProgress { .. } => {
                assert!(body.first() == Some(&b'P') && matches!(body.len(), 33 | 34));
            }
            RecordState::Completed { response, .. } => {
                assert_eq!(body.first(), Some(&b'C'));
                assert_eq!(&*response, &body[17..]);
            }
        },
        Err(error) => assert!(
            matches!(error, crate::StoreError::Corrupt { .. }),
            "{error:?}"
        ),
    }
}

/// A PostgreSQL row's columns, from `data`: a flag byte (bit 0: a token,
/// bit 1: a response), the remaining milliseconds (8 bytes), then the
/// fingerprint, the token and the response, separated by `0xFF`.
#[cfg(feature = "postgres")]
pub fn postgres_record(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (remaining, rest) = rest.split_at(rest.len().min(8));
    let mut millis = [0; 8];
    millis[..remaining.len()].copy_from_slice(remaining);
    let mut columns = rest.split(|&b| b == 0xFF);
    let fingerprint = columns.next().unwrap_or_default();
    let token = columns.next().filter(|_| flags & 1 != 0);
    let response = columns.next().filter(|_| flags & 2 != 0);
    let key = StorageKey::new(
        "ns",
        "",
        "op",
        &IdempotencyKey::from_token("k").expect("valid"),
    );
    let decoded = crate::store::decode_postgres_columns(
        &key,
        fingerprint,
        token,
        response,
        i64::from_be_bytes(millis),
    );
    match decoded {
        Ok(record) => {
            assert_eq!(fingerprint.len(), 16);
            match record.state {
                crate::record::RecordState::InProgress { .. } => {
                    assert!(token.is_some_and(|t| t.len() == 16) && response.is_none());
                }
                crate::record::RecordState::Completed {
                    response: stored, ..
                } => {
                    assert!(token.is_none());
                    assert_eq!(Some(&*stored), response);
                }
            }
        }
        Err(error) => assert!(
            matches!(error, crate::StoreError::Corrupt { .. }),
            "{error:?}"
        ),
    }
}

/// A stored result of an `#[idempotent]` function: decoded or an error,
/// never a panic; what decodes encodes back to an equal value.
#[cfg(feature = "memory")]
pub fn result_record(data: &[u8]) {
    type Value = Result<serde_json::Value, serde_json::Value>;
    static OPERATION: Operation = Operation::new("fuzz.result");
    let codec = ResultCodec::<true>;
    let Ok(value): Result<Value, _> = replay(&codec, data, &OPERATION) else {
        return;
    };
    let runtime = crate::Idempotency::new(crate::memory::MemoryStore::new());
    let (bytes, _) = codec
        .encode(&value, &OPERATION, &runtime)
        .expect("a decoded value encodes")
        .expect("a caching codec stores errors too");
    let again: Value = replay(&codec, &bytes, &OPERATION).expect("an encoded value decodes");
    assert_eq!(again, value);
}
