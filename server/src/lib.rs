//! # baton-server
//!
//! The `baton` binary and everything that touches a socket or a core: the ZooKeeper client
//! protocol ([`zk`]), the thread-per-core runtime ([`runtime`], [`serve`], [`shard`]), the
//! write path ([`core`]), sessions, watches, four-letter words, and operator tools for a data
//! directory ([`inspect`]).

pub mod cli;
pub mod config;
pub mod conn;
pub mod core;
pub mod dev;
pub mod forward;
pub mod fourlw;
pub mod inspect;
pub mod peer;
pub mod reads;
pub mod runtime;
pub mod serve;
pub mod session;
pub mod shard;
pub mod watch;
pub mod zk;
