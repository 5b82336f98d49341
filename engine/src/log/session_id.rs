use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// A client session's id, as ZooKeeper numbers sessions: the id of the server that created
/// it in the top byte, then bits of that server's start time and a counter. 0 means "no
/// session" (server-issued entries such as the reaper's deletes carry it).
///
/// On the wire (jute) and in a znode's `ephemeralOwner` it is a signed 64-bit number; between
/// servers (Zab's liveness reports) the same 64 bits travel unsigned.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash))]
pub struct SessionId(pub i64);

impl SessionId {
    /// "No session".
    pub const NONE: SessionId = SessionId(0);

    /// The id as the ZooKeeper protocol carries it.
    pub const fn as_i64(self) -> i64 {
        self.0
    }

    /// The same 64 bits, unsigned (the Zab wire format's encoding).
    pub const fn as_u64(self) -> u64 {
        self.0 as u64
    }

    /// The id from its unsigned encoding.
    pub const fn from_u64(bits: u64) -> SessionId {
        SessionId(bits as i64)
    }
}

impl ArchivedSessionId {
    /// The id, out of its archive.
    pub fn to_native(&self) -> SessionId {
        SessionId(self.0.to_native())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionId;

    #[test]
    fn session_ids_survive_the_unsigned_encoding_and_print_in_hex() {
        let id = SessionId(-0x0100_0000_0000_0001);
        assert_eq!(SessionId::from_u64(id.as_u64()), id);
        assert_eq!(SessionId(0x1f).to_string(), "0x1f");
    }
}
