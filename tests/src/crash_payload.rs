//! Self-describing payloads for crash tests: `[zxid u64][round u32][len u32][pattern]`, where
//! the pattern is a function of (zxid, round), so a reader can tell a whole, correct entry
//! from a stale or damaged one.

/// Payload length for a zxid: between 24 and about 2 KB, varying.
pub fn len_for(zxid: u64) -> usize {
    24 + (zxid.wrapping_mul(2654435761) % 2000) as usize
}

fn pattern(zxid: u64, round: u32, i: usize) -> u8 {
    (zxid.wrapping_mul(0x9E37_79B9) ^ (round as u64).wrapping_mul(0x85EB_CA6B) ^ i as u64).wrapping_mul(31) as u8
}

/// The payload written for `zxid` in `round`.
pub fn make(zxid: u64, round: u32) -> Vec<u8> {
    let len = len_for(zxid);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&zxid.to_le_bytes());
    p.extend_from_slice(&round.to_le_bytes());
    p.extend_from_slice(&(len as u32).to_le_bytes());
    p.extend((16..len).map(|i| pattern(zxid, round, i)));
    p
}

/// The round a payload was written in, if it is exactly `make(zxid, round)`.
pub fn check(zxid: u64, payload: &[u8]) -> Option<u32> {
    let round = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    (make(zxid, round) == payload).then_some(round)
}
