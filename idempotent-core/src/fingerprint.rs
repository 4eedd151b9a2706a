//! Payload fingerprints: a stable 128-bit hash of what a request asked for.
//!
//! A fingerprint lets the engine tell a genuine retry (same key, same payload)
//! from a key reused for a different request (same key, other payload), which
//! is refused with [`Error::KeyReused`](crate::Error::KeyReused).
//!
//! # Which hash, and why
//!
//! XXH3-128 (the `xxhash-rust` crate). Its output is frozen by the XXH3
//! specification, identical on every platform and release, which matters
//! because fingerprints are stored and compared across processes, machines and
//! deployments; `std::hash::Hash` guarantees none of that. It hashes several
//! GB/s, so fingerprinting costs far less than the store round trip. It is not
//! a cryptographic hash: a fingerprint detects mistakes, not attackers, and an
//! attacker who forges a collision can only replay a response within its own
//! scope, which it was entitled to see anyway.
//!
//! # The canonical payload
//!
//! [`Fingerprint::of`] streams the value's `serde_json` encoding into the
//! hasher without allocating. Struct fields are written in declaration order,
//! so the encoding is stable for a given type. Maps are written in iteration
//! order: use `BTreeMap` (not `HashMap`) in fingerprinted values, or leave such
//! arguments out of the fingerprint.

use std::fmt;
use std::io;

use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

/// A 128-bit payload fingerprint.
///
/// ```
/// use idempotent_core::Fingerprint;
///
/// let a = Fingerprint::of(&("charge", 1000, "USD"));
/// assert_eq!(a, Fingerprint::of(&("charge", 1000, "USD")));
/// assert_ne!(a, Fingerprint::of(&("charge", 1001, "USD")));
/// assert_eq!(Fingerprint::from_bytes(b"body"), Fingerprint::from_bytes(b"body"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(u128);

impl Fingerprint {
    /// Fingerprints any serializable value through its canonical JSON
    /// encoding, or says why the value cannot be encoded (a map with
    /// non-string keys, say, or a `Serialize` impl that fails).
    ///
    /// The engine ([`Call::payload`](crate::Call::payload), `#[idempotent]`)
    /// uses this and refuses such a payload with
    /// [`Error::InvalidPayload`](crate::Error::InvalidPayload): two payloads
    /// that fail the same way would otherwise share a fingerprint, and a
    /// changed payload could replay the old response.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use idempotent_core::Fingerprint;
    ///
    /// assert!(Fingerprint::try_of(&("charge", 1000)).is_ok());
    /// let by_pair = HashMap::from([((1, 2), "x")]);
    /// assert!(Fingerprint::try_of(&by_pair).is_err()); // JSON keys must be strings
    /// ```
    pub fn try_of<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        let mut writer = HashWriter(Xxh3::new());
        serde_json::to_writer(&mut writer, value).map_err(PayloadError)?;
        Ok(Self(writer.0.digest128()))
    }

    /// Fingerprints any serializable value through its canonical JSON
    /// encoding, for values that always encode (see [`try_of`](Self::try_of)).
    ///
    /// A value that fails to serialize still gets a fingerprint: the
    /// encoding written up to the failure and the error message are hashed.
    /// Different values that fail at the same point therefore collide; the
    /// engine uses [`try_of`](Self::try_of) instead.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Self {
        let mut writer = HashWriter(Xxh3::new());
        if let Err(error) = serde_json::to_writer(&mut writer, value) {
            writer.0.update(b"\0serialize-error\0");
            writer.0.update(error.to_string().as_bytes());
        }
        Self(writer.0.digest128())
    }

    /// Fingerprints raw bytes (an HTTP body, say).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// Fingerprints several byte strings as one sequence; each part is
    /// length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Xxh3::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Self(hasher.digest128())
    }

    /// Builds a fingerprint from its raw value (for stores decoding a record).
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The raw 128-bit value (for stores encoding a record).
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:032x})", self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a value cannot be fingerprinted: its serialization failed (see
/// [`Fingerprint::try_of`]).
#[derive(Debug, thiserror::Error)]
#[error("the value cannot be serialized: {0}")]
pub struct PayloadError(#[source] serde_json::Error);

struct HashWriter(Xxh3);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_across_releases() {
        // Stored fingerprints must keep matching after an upgrade: this value
        // may only change together with a documented storage-format break.
        assert_eq!(
            Fingerprint::of(&(1u32, "USD")).to_string(),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(br#"[1,"USD"]"#))
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        let ab_c = Fingerprint::from_parts([&b"ab"[..], b"c"]);
        let a_bc = Fingerprint::from_parts([&b"a"[..], b"bc"]);
        assert_ne!(ab_c, a_bc);
    }
}
