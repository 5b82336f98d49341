//! # baton-server
//!
//! The `baton` binary and everything that touches a socket or a core. So far it holds the
//! operator tools for a data directory ([`inspect`]); the ZooKeeper-protocol server, the
//! runtime and the admin endpoints arrive with the issues that build them (see README).

pub mod inspect;
pub mod zk;
