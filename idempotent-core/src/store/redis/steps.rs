//! Journaled steps in the Redis store: each call's steps in a hash of
//! their own, in the cluster slot of the call's record, written by a script
//! that checks the record's lease in the same step (see the module docs of
//! [`redis`](super)).

use std::collections::HashMap;

use redis::Value;

use super::RedisStore;
use super::connection::Connection;
use super::layout::{corrupt, in_progress, millis_arg, steps_key, with_key};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::store::{StepLog, StepWrite, StoreError};

/// The hash field holding the fingerprint of the call that recorded the
/// steps. Every step's field is `s` and its name, so no step can take it.
const FINGERPRINT_FIELD: &[u8] = b"f";

/// Starts the hash field of every step, before the step's name.
const STEP_FIELD: u8 = b's';

impl RedisStore {
    /// The Redis key of a call's steps, a hash: `<key_prefix>{<tag>}s<storage key>`,
    /// where `<tag>` puts it in the cluster slot of the call's record (see
    /// the module docs).
    pub fn steps_key(&self, key: &StorageKey) -> String {
        steps_key(&self.inner.key_prefix, key.as_str()).key
    }

    /// `HGETALL` of the call's steps.
    pub(super) async fn read_steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        let mut command = redis::cmd("HGETALL");
        command.arg(self.steps_key(key));
        let answer = self.query(&command).await.map_err(|e| with_key(e, key))?;
        decode_steps(key, answer)
    }

    /// The step and the lease's extension, in one script (`RECORD_STEP`).
    pub(super) async fn write_step(
        &self,
        key: &StorageKey,
        step: StepWrite<'_>,
    ) -> Result<(), StoreError> {
        let steps = steps_key(&self.inner.key_prefix, key.as_str());
        if !steps.in_record_slot && matches!(self.inner.connection, Connection::Cluster(_)) {
            // The script would touch two slots, which a cluster refuses.
            return Err(StoreError::Unsupported {
                what: "journaled steps on a cluster with a key prefix whose first braces are an \
                       empty `{}`",
            });
        }
        let fingerprint = step.fingerprint.as_u128().to_be_bytes();
        let mut field = Vec::with_capacity(1 + step.name.len());
        field.push(STEP_FIELD);
        field.extend_from_slice(step.name.as_bytes());
        let lease = millis_arg(step.lease);
        let ttl = millis_arg(step.ttl);
        let args: [&[u8]; 6] = [
            &in_progress(fingerprint, step.token),
            lease.as_bytes(),
            &fingerprint,
            &field,
            step.value,
            ttl.as_bytes(),
        ];
        self.fenced_answer(&self.inner.scripts.record_step, key, &[&steps.key], &args)
            .await
    }

    /// `DEL` of the call's steps.
    pub(super) async fn drop_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        let mut command = redis::cmd("DEL");
        command.arg(self.steps_key(key));
        match self.query(&command).await.map_err(|e| with_key(e, key))? {
            Value::Int(_) => Ok(()),
            other => Err(corrupt(key, format!("unexpected answer {other:?}"))),
        }
    }
}

/// Decodes the answer to `HGETALL` (pairs in an array on RESP2, a map on
/// RESP3): none for no hash, and corrupt for a hash without the
/// fingerprint, or with a field this store does not write.
fn decode_steps(key: &StorageKey, answer: Value) -> Result<Option<StepLog>, StoreError> {
    let pairs: Vec<(Value, Value)> = match answer {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        other => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut fingerprint = None;
    let mut values = HashMap::with_capacity(pairs.len() - 1);
    for pair in pairs {
        let (Value::BulkString(field), Value::BulkString(value)) = pair else {
            return Err(corrupt(key, format!("unexpected answer {pair:?}")));
        };
        if field == FINGERPRINT_FIELD {
            let bytes = <[u8; 16]>::try_from(value).map_err(|value| {
                let detail = format!("the steps' fingerprint is {} bytes, not 16", value.len());
                corrupt(key, detail)
            })?;
            fingerprint = Some(Fingerprint::from_u128(u128::from_be_bytes(bytes)));
        } else if let Some((&STEP_FIELD, name)) = field.split_first() {
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| corrupt(key, "a step's name is not UTF-8"))?;
            values.insert(name, value);
        } else {
            let field = String::from_utf8_lossy(&field);
            let detail = format!("the steps hold a field this store does not write: {field:?}");
            return Err(corrupt(key, detail));
        }
    }
    let fingerprint = fingerprint.ok_or_else(|| corrupt(key, "the steps have no fingerprint"))?;
    Ok(Some(StepLog {
        fingerprint,
        values,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::IdempotencyKey;

    fn key() -> StorageKey {
        StorageKey::new("ns", "", "op", &IdempotencyKey::parse("k").unwrap())
    }

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    #[test]
    fn steps_decode_from_resp2_and_resp3() {
        let fp = Fingerprint::from_u128(7);
        let fp_bytes = 7u128.to_be_bytes();
        let expected = Some(StepLog {
            fingerprint: fp,
            values: HashMap::from([
                ("charge".to_owned(), b"ch_1".to_vec()),
                ("f".to_owned(), Vec::new()),
            ]),
        });
        let flat = vec![
            bulk(b"scharge"),
            bulk(b"ch_1"),
            bulk(b"f"),
            bulk(&fp_bytes),
            bulk(b"sf"),
            bulk(b""),
        ];
        assert_eq!(
            decode_steps(&key(), Value::Array(flat.clone())).unwrap(),
            expected
        );
        let mut items = flat.into_iter();
        let map = std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect();
        assert_eq!(decode_steps(&key(), Value::Map(map)).unwrap(), expected);
        assert_eq!(
            decode_steps(&key(), Value::Array(Vec::new())).unwrap(),
            None
        );
        assert_eq!(decode_steps(&key(), Value::Map(Vec::new())).unwrap(), None);
    }

    #[test]
    fn malformed_steps_are_corrupt() {
        let fp = 7u128.to_be_bytes();
        let cases: [Vec<Value>; 6] = [
            vec![bulk(b"scharge"), bulk(b"ch_1")],
            vec![bulk(b"f"), bulk(&fp[..15])],
            vec![bulk(b"f"), bulk(&fp), bulk(b"charge"), bulk(b"x")],
            vec![bulk(b"f"), bulk(&fp), bulk(b""), bulk(b"x")],
            vec![bulk(b"f"), bulk(&fp), bulk(b"s\xff"), bulk(b"x")],
            vec![bulk(b"f"), bulk(&fp), bulk(b"sa")],
        ];
        for case in cases {
            let answer = decode_steps(&key(), Value::Array(case.clone()));
            assert!(
                matches!(answer, Err(StoreError::Corrupt { .. })),
                "{case:?}: {answer:?}"
            );
        }
        assert!(matches!(
            decode_steps(&key(), Value::Int(1)),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
