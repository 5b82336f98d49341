//! The ZooKeeper client protocol: jute codec and records.

pub mod jute;
pub mod proto;
