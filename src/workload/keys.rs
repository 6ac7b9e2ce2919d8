//! The Redis key layout. Every key of an organization carries its id as a hash tag
//! (`a:{42}:...`) so a Redis Cluster target keeps one organization on one slot.
//!
//! | family | key | type | TTL |
//! |---|---|---|---|
//! | counter | `a:{org}:ev:{type}:{YYYYMMDDHH}` | string (INCR) | end of bucket + `TIME_BUCKETS` h |
//! | unique users | `a:{org}:uu:{YYYYMMDDHH}` | HyperLogLog (PFADD) | same as counters |
//! | dashboard cache | `a:{org}:c:dash` | string (JSON) | `CACHE_TTL` |
//! | filtered cache | `a:{org}:c:f:{type}:{window}h` | string (JSON) | `CACHE_TTL` |
//! | ad-hoc cache | `a:{org}:c:q:{nonce}` | string (JSON) | `CACHE_TTL` |
//!
//! Builders write into a caller-owned buffer so the hot path does not allocate.

use std::io::Write;

use super::EventType;

pub const PREFIX: &str = "a:";

fn org_prefix(buf: &mut Vec<u8>, org: u32) {
    buf.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(buf, "a:{{{org}}}:");
}

pub fn counter(buf: &mut Vec<u8>, org: u32, ty: EventType, bucket: i32) {
    org_prefix(buf, org);
    let _ = write!(buf, "ev:{}:{bucket}", ty.as_str());
}

pub fn uniques(buf: &mut Vec<u8>, org: u32, bucket: i32) {
    org_prefix(buf, org);
    let _ = write!(buf, "uu:{bucket}");
}

pub fn dashboard(buf: &mut Vec<u8>, org: u32) {
    org_prefix(buf, org);
    buf.extend_from_slice(b"c:dash");
}

pub fn filtered(buf: &mut Vec<u8>, org: u32, ty: EventType, window_hours: u32) {
    org_prefix(buf, org);
    let _ = write!(buf, "c:f:{}:{window_hours}h", ty.as_str());
}

pub fn adhoc(buf: &mut Vec<u8>, org: u32, nonce: u64) {
    org_prefix(buf, org);
    let _ = write!(buf, "c:q:{nonce:x}");
}

/// The parts of a counter key, or None if `key` is not one.
pub fn parse_counter(key: &[u8]) -> Option<(u32, EventType, i32)> {
    let s = std::str::from_utf8(key).ok()?;
    let rest = s.strip_prefix("a:{")?;
    let (org, rest) = rest.split_once("}:ev:")?;
    let (ty, bucket) = rest.split_once(':')?;
    let ty = EventType::ALL.into_iter().find(|t| t.as_str() == ty)?;
    Some((org.parse().ok()?, ty, bucket.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_lay_out_keys_with_hash_tags() {
        let mut b = Vec::new();
        counter(&mut b, 42, EventType::Click, 2026112517);
        assert_eq!(b, b"a:{42}:ev:click:2026112517");
        uniques(&mut b, 7, 2026112517);
        assert_eq!(b, b"a:{7}:uu:2026112517");
        dashboard(&mut b, 1);
        assert_eq!(b, b"a:{1}:c:dash");
        filtered(&mut b, 3, EventType::PageView, 6);
        assert_eq!(b, b"a:{3}:c:f:page_view:6h");
        adhoc(&mut b, 3, 255);
        assert_eq!(b, b"a:{3}:c:q:ff");
    }

    #[test]
    fn should_parse_what_it_builds() {
        let mut b = Vec::new();
        for ty in EventType::ALL {
            counter(&mut b, 123, ty, 2026010100);
            assert_eq!(parse_counter(&b), Some((123, ty, 2026010100)));
        }
        assert_eq!(parse_counter(b"a:{1}:uu:2026010100"), None);
        assert_eq!(parse_counter(b"a:{x}:ev:click:1"), None);
        assert_eq!(parse_counter(b"a:{1}:ev:nope:1"), None);
    }

    #[test]
    fn should_keep_one_org_on_one_cluster_slot() {
        let mut a = Vec::new();
        let mut c = Vec::new();
        counter(&mut a, 9, EventType::Signup, 2026112500);
        dashboard(&mut c, 9);
        assert_eq!(
            redis_protocol::redis_keyslot(&a),
            redis_protocol::redis_keyslot(&c)
        );
    }
}
