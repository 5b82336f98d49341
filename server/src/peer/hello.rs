//! The first bytes of a peer connection: who is calling, from which ensemble, and which
//! life of that server (its incarnation). The acceptor checks them before anything else is
//! read and answers with its own incarnation; a connection that fails the check is closed
//! with a log line that says why.
//!
//! ```text
//!  0        8                16               24               32
//!  +--------+----------------+----------------+----------------+
//!  | magic  | ensemble u64LE | server id u64LE| incarnation LE |
//!  +--------+----------------+----------------+----------------+
//! ```
#![deny(clippy::indexing_slicing)]

use baton_engine::zab::ServerId;
use xxhash_rust::xxh3::xxh3_64;

/// "BATONPR" and the hello's version.
const MAGIC: [u8; 8] = *b"BATONPR2";

/// Length of a hello.
pub const HELLO_BYTES: usize = 32;

/// A hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The caller's ensemble fingerprint (see [`ensemble_fingerprint`]).
    pub ensemble: u64,
    /// The caller's server id.
    pub from: ServerId,
    /// The caller's incarnation (drawn at its start).
    pub incarnation: u64,
}

/// Why a hello is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a Baton peer (or a Baton of another version).
    #[error("not a Baton peer hello (a client on the peer port, or another version)")]
    NotBaton,
    /// A Baton server of another ensemble (other members or another ensemble name).
    #[error("a server of another ensemble (its fingerprint {theirs:016x}, ours {ours:016x}: other members or another --ensemble-name)")]
    OtherEnsemble {
        /// The caller's fingerprint.
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// An id that is not a member.
    #[error("server id {0} is not a member of this ensemble")]
    UnknownServer(ServerId),
    /// Our own id: two servers are configured with the same id.
    #[error("a peer claims this server's own id {0}: two servers are configured with the same id")]
    OwnId(ServerId),
}

impl Hello {
    /// Its bytes.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        for (slot, bytes) in out.chunks_exact_mut(8).zip([
            MAGIC,
            self.ensemble.to_le_bytes(),
            self.from.to_le_bytes(),
            self.incarnation.to_le_bytes(),
        ]) {
            slot.copy_from_slice(&bytes);
        }
        out
    }

    /// Reads a hello and checks it against this server: `ensemble` is our fingerprint, `me`
    /// our id, `members` every member's id.
    pub fn check(
        bytes: &[u8; HELLO_BYTES],
        ensemble: u64,
        me: ServerId,
        members: &[ServerId],
    ) -> Result<Hello, HelloError> {
        let mut words = bytes.chunks_exact(8).map(|w| <[u8; 8]>::try_from(w).unwrap_or_default());
        let mut next = || words.next().unwrap_or_default();
        if next() != MAGIC {
            return Err(HelloError::NotBaton);
        }
        let hello = Hello {
            ensemble: u64::from_le_bytes(next()),
            from: u64::from_le_bytes(next()),
            incarnation: u64::from_le_bytes(next()),
        };
        if hello.ensemble != ensemble {
            return Err(HelloError::OtherEnsemble { theirs: hello.ensemble, ours: ensemble });
        }
        if hello.from == me {
            return Err(HelloError::OwnId(me));
        }
        if !members.contains(&hello.from) {
            return Err(HelloError::UnknownServer(hello.from));
        }
        Ok(hello)
    }
}

/// What every member of one ensemble agrees on: its name and its members with their roles
/// (not their addresses, which each server may reach differently). Two ensembles with the
/// same members and the same name look alike: give them different `--ensemble-name`s.
pub fn ensemble_fingerprint(name: &str, members: &[(ServerId, bool)]) -> u64 {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    let mut bytes = name.as_bytes().to_vec();
    for (id, observer) in sorted {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.push(u8::from(observer));
    }
    xxh3_64(&bytes)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests damage bytes on purpose")]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_every_refusal_says_why() {
        let ensemble = ensemble_fingerprint("baton", &[(1, false), (2, false), (3, true)]);
        assert_eq!(ensemble, ensemble_fingerprint("baton", &[(3, true), (2, false), (1, false)]), "order-free");
        assert_ne!(ensemble, ensemble_fingerprint("other", &[(1, false), (2, false), (3, true)]));
        assert_ne!(ensemble, ensemble_fingerprint("baton", &[(1, false), (2, false), (3, false)]));
        let hello = Hello { ensemble, from: 2, incarnation: 77 };
        let bytes = hello.encode();
        assert_eq!(Hello::check(&bytes, ensemble, 1, &[1, 2, 3]), Ok(hello));
        assert_eq!(
            Hello::check(&bytes, ensemble ^ 1, 1, &[1, 2, 3]),
            Err(HelloError::OtherEnsemble { theirs: ensemble, ours: ensemble ^ 1 })
        );
        assert_eq!(Hello::check(&bytes, ensemble, 2, &[1, 2, 3]), Err(HelloError::OwnId(2)));
        assert_eq!(Hello::check(&bytes, ensemble, 1, &[1, 3]), Err(HelloError::UnknownServer(2)));
        let mut garbage = bytes;
        garbage[0] ^= 1;
        assert_eq!(Hello::check(&garbage, ensemble, 1, &[1, 2, 3]), Err(HelloError::NotBaton));
        assert_eq!(Hello::check(&[0; HELLO_BYTES], ensemble, 1, &[1, 2, 3]), Err(HelloError::NotBaton));
    }
}
