use rkyv::{Archive, Deserialize, Serialize};

use crate::log::Zxid;

/// Owner value of a container znode (`EphemeralType.CONTAINER_EPHEMERAL_OWNER`).
pub const CONTAINER_OWNER: i64 = i64::MIN;
const EXTENDED_MASK: i64 = 0xff00_0000_0000_0000_u64 as i64;
const EXTENDED_VALUE_MASK: i64 = 0x0000_00ff_ffff_ffff;
/// The largest TTL a TTL node may have (five bytes of milliseconds).
pub const TTL_MAX_MS: i64 = EXTENDED_VALUE_MASK;

/// What ZooKeeper puts in `ephemeralOwner` for a TTL node: the extended-type marker and the
/// TTL in milliseconds (`EphemeralType.TTL.toEphemeralOwner`).
pub const fn ttl_owner(ttl_ms: i64) -> i64 {
    EXTENDED_MASK | (ttl_ms & EXTENDED_VALUE_MASK)
}

/// The TTL encoded in an `ephemeralOwner`, if it is a TTL node's.
pub const fn ttl_of_owner(owner: i64) -> Option<i64> {
    if owner != CONTAINER_OWNER && owner & EXTENDED_MASK == EXTENDED_MASK && owner & 0x00ff_ff00_0000_0000 == 0 {
        Some(owner & EXTENDED_VALUE_MASK)
    } else {
        None
    }
}

/// What the `ephemeralOwner` of a znode says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    /// 0: a persistent znode.
    Persistent,
    /// A container.
    Container,
    /// A TTL node with this TTL.
    Ttl(i64),
    /// An ephemeral owned by this session.
    Ephemeral(i64),
}

/// Classifies an `ephemeralOwner` value.
pub const fn owner_kind(owner: i64) -> OwnerKind {
    if owner == 0 {
        OwnerKind::Persistent
    } else if owner == CONTAINER_OWNER {
        OwnerKind::Container
    } else if let Some(ttl) = ttl_of_owner(owner) {
        OwnerKind::Ttl(ttl)
    } else {
        OwnerKind::Ephemeral(owner)
    }
}

/// The part of a znode's Stat that is stored (ZooKeeper's `StatPersisted`); `dataLength` and
/// `numChildren` are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct StatPersisted {
    /// Zxid of the create.
    pub czxid: i64,
    /// Zxid of the last data change.
    pub mzxid: i64,
    /// Zxid of the last change to the children.
    pub pzxid: i64,
    /// Create time (ms).
    pub ctime: i64,
    /// Last data change time (ms).
    pub mtime: i64,
    /// Data version.
    pub version: i32,
    /// Children version (creates only, as ZooKeeper).
    pub cversion: i32,
    /// ACL version.
    pub aversion: i32,
    /// Owner session of an ephemeral, or the container/TTL marker, or 0.
    pub ephemeral_owner: i64,
}

impl StatPersisted {
    /// The Stat of a new znode (`DataTree.createStat`).
    pub fn created(zxid: Zxid, time_ms: i64, ephemeral_owner: i64) -> StatPersisted {
        let z = zxid.0 as i64;
        StatPersisted {
            czxid: z,
            mzxid: z,
            pzxid: z,
            ctime: time_ms,
            mtime: time_ms,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner,
        }
    }
}

/// ZooKeeper's full `Stat`, as replies carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)] // field names and meanings are ZooKeeper's
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

impl Stat {
    /// The full Stat clients see, from the stored part and the derived counts, as
    /// ZooKeeper's `DataNode.copyStat`: the stored cversion counts child creates (it numbers
    /// sequential children), the reported one creates and deletes (`2 × creates − children`);
    /// `ephemeralOwner` is 0 for containers and TTL znodes (their encodings stay internal).
    pub fn new(p: &StatPersisted, data_length: usize, num_children: usize) -> Stat {
        let num_children = num_children.min(i32::MAX as usize) as i32;
        let ephemeral_owner =
            if matches!(owner_kind(p.ephemeral_owner), OwnerKind::Ephemeral(_)) { p.ephemeral_owner } else { 0 };
        Stat {
            czxid: p.czxid,
            mzxid: p.mzxid,
            ctime: p.ctime,
            mtime: p.mtime,
            version: p.version,
            cversion: p.cversion.wrapping_mul(2).wrapping_sub(num_children),
            aversion: p.aversion,
            ephemeral_owner,
            data_length: data_length.min(i32::MAX as usize) as i32,
            num_children,
            pzxid: p.pzxid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_encodings_match_zookeeper() {
        assert_eq!(ttl_owner(1) as u64, 0xff00_0000_0000_0001);
        assert_eq!(owner_kind(ttl_owner(5000)), OwnerKind::Ttl(5000));
        assert_eq!(owner_kind(CONTAINER_OWNER), OwnerKind::Container);
        assert_eq!(owner_kind(0), OwnerKind::Persistent);
        assert_eq!(owner_kind(0x1000_0000_0000_0001), OwnerKind::Ephemeral(0x1000_0000_0000_0001));
    }
}
