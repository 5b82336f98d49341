//! A server's role in its ensemble: the one vocabulary for looking, following and leading.
//! The core reports it ([`super::Action::RoleChanged`]), election notifications carry it, and
//! the server derives what its operators see (ZooKeeper's `Mode:` line) from it.

use super::message::ServerId;

/// A server's role as the protocol sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Electing a leader.
    Looking,
    /// Following `leader` in `epoch`; `serving` once synchronised (UPTODATE received).
    Following {
        /// The leader.
        leader: ServerId,
        /// The epoch (0 until the leader's LEADERINFO arrives).
        epoch: u32,
        /// Synchronised with the leader and able to serve clients.
        serving: bool,
    },
    /// Leading `epoch`; `established` once a quorum accepted the epoch's history.
    Leading {
        /// The epoch (0 until discovery chose it).
        epoch: u32,
        /// A quorum acknowledged NEWLEADER: proposals are accepted.
        established: bool,
    },
}

impl Role {
    /// Whether a server in this role serves clients: an established leader, or a follower
    /// (or observer) synchronised with its leader.
    pub fn serving(self) -> bool {
        match self {
            Role::Leading { established, .. } => established,
            Role::Following { serving, .. } => serving,
            Role::Looking => false,
        }
    }

    /// The epoch led or followed (0 while looking, or before discovery chose it).
    pub fn epoch(self) -> u32 {
        match self {
            Role::Leading { epoch, .. } | Role::Following { epoch, .. } => epoch,
            Role::Looking => 0,
        }
    }

    /// Whether it is [`Role::Looking`].
    pub fn is_looking(self) -> bool {
        matches!(self, Role::Looking)
    }

    /// Whether it is [`Role::Leading`] (established or not).
    pub fn is_leading(self) -> bool {
        matches!(self, Role::Leading { .. })
    }
}
