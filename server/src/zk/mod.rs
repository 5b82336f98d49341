//! The ZooKeeper front: the jute codec and records ([`jute`], [`proto`]), client
//! connections ([`conn`]), one shard's clients ([`shard`]) and its tasks ([`tasks`]), reads
//! and session requests answered from the local tree ([`reads`]), watch registrations
//! ([`watch`]), and the replies it makes of the write path's answers ([`replies`]).
//!
//! It asks the write path through `crate::runtime`'s messages and never reaches into it; the
//! four-letter words on the client port are `crate::admin`'s.

pub mod conn;
pub mod jute;
pub mod proto;
pub mod reads;
pub mod replies;
pub mod sasl;
pub mod shard;
pub mod tasks;
pub mod watch;
