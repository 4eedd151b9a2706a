//! The JSON shape of the admin types (serde), shared by the command line
//! and the admin router: flat objects, hex fingerprints and tokens,
//! durations in milliseconds, and a response only when it was asked for.

use serde::ser::{Serialize, SerializeMap as _, Serializer};

use super::{Eviction, OperationCount, RecordInfo, RecordStatus};

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Serialize for RecordInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (namespace, scope, operation, key) = self.key.parts();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("namespace", namespace)?;
        map.serialize_entry("scope", scope)?;
        map.serialize_entry("operation", operation)?;
        map.serialize_entry("key", key)?;
        match &self.status {
            RecordStatus::InProgress {
                owner,
                lease_left,
                running_for,
            } => {
                map.serialize_entry("state", "in_progress")?;
                map.serialize_entry("fingerprint", &self.fingerprint.to_string())?;
                map.serialize_entry("owner", &format!("{:032x}", owner.as_u128()))?;
                map.serialize_entry("lease_left_ms", &millis(*lease_left))?;
                map.serialize_entry("running_for_ms", &running_for.map(millis))?;
            }
            RecordStatus::Completed {
                expires_in,
                response_len,
                response,
            } => {
                map.serialize_entry("state", "completed")?;
                map.serialize_entry("fingerprint", &self.fingerprint.to_string())?;
                map.serialize_entry("expires_in_ms", &millis(*expires_in))?;
                map.serialize_entry("response_bytes", response_len)?;
                match response.as_deref().map(std::str::from_utf8) {
                    Some(Ok(text)) => map.serialize_entry("response", text)?,
                    Some(Err(_)) => {
                        let hex: String = response
                            .iter()
                            .flat_map(|bytes| bytes.iter())
                            .map(|byte| format!("{byte:02x}"))
                            .collect();
                        map.serialize_entry("response_hex", &hex)?;
                    }
                    None => {}
                }
            }
        }
        map.serialize_entry("layout", &self.layout)?;
        map.end()
    }
}

impl Serialize for Eviction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Self::Evicted { in_progress } => {
                map.serialize_entry("outcome", "evicted")?;
                map.serialize_entry("was_in_progress", in_progress)?;
            }
            Self::Absent => map.serialize_entry("outcome", "absent")?,
            Self::Refused { lease_left } => {
                map.serialize_entry("outcome", "refused")?;
                map.serialize_entry("lease_left_ms", &millis(*lease_left))?;
            }
        }
        map.end()
    }
}

impl Serialize for OperationCount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("namespace", &self.namespace)?;
        map.serialize_entry("operation", &self.operation)?;
        map.serialize_entry("in_progress", &self.in_progress)?;
        map.serialize_entry("completed", &self.completed)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::key::{IdempotencyKey, StorageKey};
    use crate::record::LeaseToken;

    fn key() -> StorageKey {
        StorageKey::new(
            "idem",
            "t1",
            "shop.charge",
            &IdempotencyKey::parse("k").unwrap(),
        )
    }

    #[test]
    fn a_response_is_in_the_json_only_when_asked_for() {
        let completed = |response: Option<&[u8]>| {
            let record = RecordInfo::new(
                key(),
                Fingerprint::from_u128(0xab),
                2,
                RecordStatus::Completed {
                    expires_in: Duration::from_millis(1500),
                    response_len: 2,
                    response: response.map(Into::into),
                },
            );
            serde_json::to_value(record).unwrap()
        };
        let without = completed(None);
        assert_eq!(without["state"], "completed");
        assert_eq!(without["scope"], "t1");
        assert_eq!(without["expires_in_ms"], 1500);
        assert_eq!(without["response_bytes"], 2);
        assert!(without.get("response").is_none() && without.get("response_hex").is_none());
        assert_eq!(completed(Some(b"ok"))["response"], "ok");
        assert_eq!(completed(Some(&[0xff, 0x00]))["response_hex"], "ff00");
    }

    #[test]
    fn a_record_in_progress_names_its_owner() {
        let record = RecordInfo::new(
            key(),
            Fingerprint::from_u128(1),
            1,
            RecordStatus::InProgress {
                owner: LeaseToken::from_u128(0x2a),
                lease_left: Duration::from_secs(3),
                running_for: None,
            },
        );
        let json = serde_json::to_value(record).unwrap();
        assert_eq!(json["owner"], format!("{:032x}", 0x2a));
        assert_eq!(json["lease_left_ms"], 3000);
        assert!(json["running_for_ms"].is_null());
        assert_eq!(json["layout"], 1);
    }
}
