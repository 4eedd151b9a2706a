//! Redis Cluster's key slots: the slot of a whole key, and a short hash
//! tag for each slot, so that a call's steps can be put in the slot of its
//! record (see the module docs of [`redis`](super)).
//!
//! Written by hand: redis-rs 1.x computes slots (`cluster_routing::Slot::for_key`)
//! but does not expose a slot's number, which the table of tags is indexed
//! by, and CRC16 is a few lines (the tests check both against redis-rs).

use std::sync::OnceLock;

/// How many slots a cluster has.
pub(super) const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), one byte at a time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

/// Continues a CRC16/XMODEM over `bytes` (start from 0), so that a key
/// made of several parts is hashed without being assembled.
pub(super) fn crc16(mut crc: u16, bytes: &[u8]) -> u16 {
    for &byte in bytes {
        crc = (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)];
    }
    crc
}

/// The slot of a key that a cluster hashes whole (no hash tag in it),
/// given as the parts it is made of.
pub(super) fn slot_of_whole(parts: &[&[u8]]) -> u16 {
    parts.iter().fold(0, |crc, part| crc16(crc, part)) % SLOTS
}

/// A hash tag whose slot is `slot`: the smallest number that hashes there,
/// in decimal (at most six digits). The table is built once per process, on
/// the first call: about 110,000 CRCs of a few bytes each.
pub(super) fn tag_for(slot: u16) -> u32 {
    static TAGS: OnceLock<Box<[u32]>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)].into_boxed_slice();
        let mut missing = usize::from(SLOTS);
        let mut candidate = 0u32;
        let mut digits = [0; 10];
        while missing > 0 {
            let at = usize::from(slot_of_whole(&[decimal(candidate, &mut digits)]));
            if tags[at] == u32::MAX {
                tags[at] = candidate;
                missing -= 1;
            }
            candidate += 1;
        }
        tags
    });
    tags[usize::from(slot % SLOTS)]
}

/// `n` in decimal, written into `digits`.
fn decimal(mut n: u32, digits: &mut [u8; 10]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    #[test]
    fn crc16_is_redis_clusters() {
        // The check value of CRC16/XMODEM, and Redis's own example.
        assert_eq!(crc16(0, b"123456789"), 0x31C3);
        for key in ["", "a", "foo", "2:ns|0:|2:op|k", "user1000", "é"] {
            let ours = Slot::new(slot_of_whole(&[key.as_bytes()]));
            assert_eq!(ours, Some(Slot::for_key(key)), "{key:?}");
        }
        assert_eq!(
            slot_of_whole(&[b"shop:", b"{}", b"2:ns|0:|2:op|k"]),
            slot_of_whole(&[b"shop:{}2:ns|0:|2:op|k"]),
            "hashed in parts"
        );
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        let mut digits = [0; 10];
        for slot in 0..SLOTS {
            let tag = tag_for(slot);
            let text = decimal(tag, &mut digits);
            assert!(text.len() <= 6, "{tag}");
            assert_eq!(Some(Slot::for_key(text)), Slot::new(slot), "{tag}");
        }
    }
}
