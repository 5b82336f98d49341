//! Session tracking: deadlines, passwords, ids. Time comes in as a value (`now`): the
//! tracker reads no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baton_engine::SessionId;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Seed of the password derivation (ZooKeeper uses a fixed "superSecret" likewise, so that
/// any server can check a reconnecting client's password).
const PASSWORD_SEED: u64 = 0x00B3_415C_00BA_7011;

/// The 16-byte password of a session.
pub fn password(session_id: SessionId) -> Vec<u8> {
    xxh3_128_with_seed(&session_id.as_i64().to_be_bytes(), PASSWORD_SEED).to_be_bytes().to_vec()
}

/// Live sessions and when each expires unless it hears from its client.
#[derive(Debug, Default)]
pub struct SessionTracker {
    deadlines: HashMap<SessionId, (Duration, Instant)>,
    next_id: i64,
}

impl SessionTracker {
    /// A tracker whose ids start from `seed` (a server id in the top byte and the start
    /// time below, as ZooKeeper, so ids do not repeat across restarts).
    pub fn new(server_id: u8, now_ms: u64) -> SessionTracker {
        let base = ((server_id as i64) << 56) | (((now_ms as i64) << 24) as u64 >> 8) as i64;
        SessionTracker { deadlines: HashMap::new(), next_id: base }
    }

    /// A fresh session id.
    pub fn next_id(&mut self) -> SessionId {
        self.next_id += 1;
        SessionId(self.next_id)
    }

    /// Starts (or restarts) tracking a session.
    pub fn track(&mut self, id: SessionId, timeout_ms: i32, now: Instant) {
        let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
        self.deadlines.insert(id, (timeout, now + timeout));
    }

    /// Starts (or restarts) tracking `id` with a timeout of any length (etcd leases: up to
    /// 9e9 s).
    pub fn track_for(&mut self, id: SessionId, timeout: Duration, now: Instant) {
        let deadline = now.checked_add(timeout).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        self.deadlines.insert(id, (timeout, deadline));
    }

    /// Gives every tracked id its whole timeout from `now` (a new leader, as etcd's
    /// `Promote`: nobody is expired for what an old leader heard and this one did not).
    pub fn touch_all(&mut self, now: Instant) {
        for (timeout, deadline) in self.deadlines.values_mut() {
            *deadline = now.checked_add(*timeout).unwrap_or(*deadline);
        }
    }

    /// The client was heard from.
    pub fn touch(&mut self, id: SessionId, now: Instant) -> bool {
        match self.deadlines.get_mut(&id) {
            Some((timeout, deadline)) => {
                *deadline = now.checked_add(*timeout).unwrap_or(*deadline);
                true
            }
            None => false,
        }
    }

    /// Stops tracking (closed or expired).
    pub fn remove(&mut self, id: SessionId) {
        self.deadlines.remove(&id);
    }

    /// Whether a session is tracked.
    pub fn contains(&self, id: SessionId) -> bool {
        self.deadlines.contains_key(&id)
    }

    /// Sessions past their deadline, sorted; they stay tracked until [`remove`](Self::remove).
    pub fn expired(&self, now: Instant) -> Vec<SessionId> {
        let mut out: Vec<SessionId> =
            self.deadlines.iter().filter(|(_, (_, d))| *d <= now).map(|(&id, _)| id).collect();
        out.sort_unstable();
        out
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether none are tracked.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_unless_touched() {
        let t0 = Instant::now();
        let mut t = SessionTracker::new(1, 1_700_000_000_000);
        let a = t.next_id();
        let b = t.next_id();
        assert_ne!(a, b);
        assert_eq!(a.as_i64() >> 56, 1);
        t.track(a, 100, t0);
        t.track(b, 100, t0);
        assert!(t.touch(b, t0 + Duration::from_millis(80)));
        assert_eq!(t.expired(t0 + Duration::from_millis(120)), vec![a]);
        t.remove(a);
        assert_eq!(t.expired(t0 + Duration::from_millis(200)), vec![b]);
        assert_eq!(password(a), password(a));
        assert_ne!(password(a), password(b));
    }
}
