//! How a body's value is stored and replayed: tagged JSON for functions,
//! and the record stored in place of a value that could not be encoded.

use std::fmt::Display;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::operation::Operation;
use crate::error::Error;
use crate::runtime::Idempotency;

/// How a body's output is stored and replayed.
pub(crate) trait Codec<V> {
    /// The bytes to store and for how long, or `None` to release the key.
    fn encode(
        &self,
        value: &V,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error>;
    /// Decodes stored bytes.
    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<V, Error>;
    /// How long what is stored for `value` is kept (also when it cannot be
    /// encoded, and a record saying so is stored in its place).
    fn ttl(&self, _value: &V, operation: &Operation, runtime: &Idempotency) -> Duration {
        operation.ttl_on(runtime)
    }
}

/// Stores `Ok` as `b'O'` + JSON and, when `CACHE_ERRORS`, `Err` as `b'E'` + JSON.
pub(crate) struct ResultCodec<const CACHE_ERRORS: bool>;

const OK_TAG: u8 = b'O';
const ERR_TAG: u8 = b'E';
/// A record stored in place of a value that could not be encoded, followed
/// by the encoding error. [`replay`] answers it with [`Error::Codec`],
/// before any codec sees it.
const UNSTORED_TAG: u8 = b'X';

/// The record stored in place of a value that could not be encoded.
pub(super) fn unstored(error: &Error) -> Vec<u8> {
    let detail = match error {
        Error::Codec { detail, .. } => detail.as_str(),
        _ => "",
    };
    [&[UNSTORED_TAG], detail.as_bytes()].concat()
}

/// The value of a stored record, as `codec` decodes it; an [`unstored`]
/// record, whatever the codec, is the error it holds.
pub(crate) fn replay<V>(
    codec: &impl Codec<V>,
    bytes: &[u8],
    operation: &Operation,
) -> Result<V, Error> {
    match bytes.split_first() {
        Some((&UNSTORED_TAG, detail)) => Err(codec_error(
            "decode",
            operation,
            format_args!(
                "the first call with this key ran, but its result could not be stored ({}); \
                 the body is not run again",
                String::from_utf8_lossy(detail)
            ),
        )),
        _ => codec.decode(bytes, operation),
    }
}

fn encode_json<T: Serialize>(tag: u8, value: &T, operation: &Operation) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::with_capacity(128);
    bytes.push(tag);
    serde_json::to_writer(&mut bytes, value).map_err(|e| codec_error("encode", operation, e))?;
    Ok(bytes)
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8], operation: &Operation) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| codec_error("decode", operation, e))
}

pub(super) fn codec_error(
    action: &'static str,
    operation: &Operation,
    detail: impl Display,
) -> Error {
    Error::Codec {
        action,
        operation: operation.name.to_owned(),
        detail: detail.to_string(),
    }
}

impl<T, E> Codec<Result<T, E>> for ResultCodec<false>
where
    T: Serialize + DeserializeOwned,
{
    fn encode(
        &self,
        value: &Result<T, E>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error> {
        match value {
            Ok(value) => Ok(Some((
                encode_json(OK_TAG, value, operation)?,
                operation.ttl.unwrap_or(runtime.ttl()),
            ))),
            Err(_) => Ok(None),
        }
    }

    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<Result<T, E>, Error> {
        match bytes.split_first() {
            Some((&OK_TAG, json)) => decode_json(json, operation).map(Ok),
            Some((&ERR_TAG, _)) => Err(codec_error(
                "decode",
                operation,
                "the record holds a cached error, but this call does not cache errors",
            )),
            _ => Err(codec_error("decode", operation, "unknown record tag")),
        }
    }
}

impl<T, E> Codec<Result<T, E>> for ResultCodec<true>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    fn encode(
        &self,
        value: &Result<T, E>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error> {
        let ttl = self.ttl(value, operation, runtime);
        Ok(Some(match value {
            Ok(value) => (encode_json(OK_TAG, value, operation)?, ttl),
            Err(error) => (encode_json(ERR_TAG, error, operation)?, ttl),
        }))
    }

    fn ttl(&self, value: &Result<T, E>, operation: &Operation, runtime: &Idempotency) -> Duration {
        let ttl = operation.ttl_on(runtime);
        match value {
            Ok(_) => ttl,
            Err(_) => operation.error_ttl.unwrap_or(ttl),
        }
    }

    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<Result<T, E>, Error> {
        match bytes.split_first() {
            Some((&OK_TAG, json)) => decode_json(json, operation).map(Ok),
            Some((&ERR_TAG, json)) => decode_json(json, operation).map(Err),
            _ => Err(codec_error("decode", operation, "unknown record tag")),
        }
    }
}
