//! # baton-server
//!
//! The `baton` binary and everything that touches a socket or a core: the ZooKeeper client
//! protocol ([`zk`]), the single-node server ([`node`], [`serve`]), sessions, watches,
//! four-letter words, and operator tools for a data directory ([`inspect`]).

pub mod cli;
pub mod config;
pub mod conn;
pub mod fourlw;
pub mod inspect;
pub mod node;
pub mod reads;
pub mod serve;
pub mod session;
pub mod watch;
pub mod zk;
