//! # baton-server
//!
//! The `baton` binary and everything that touches a socket or a core. Its layers, each
//! depending only on the ones below it (see `ARCHITECTURE.md`):
//!
//! - [`cli`] and [`startup`]: the command line, and starting the executors;
//! - the fronts: [`zk`] (the ZooKeeper client protocol), [`etcd`] (etcd's v3 gRPC API) and
//!   [`admin`] (four-letter words);
//! - [`write`]: the write path (sequencing, forwarding, sessions, refusal ordering), a state
//!   machine without IO and the thin task that drives it;
//! - [`peer`]: replication links and the replica (the engine's shared Zab driver on the WAL);
//! - [`runtime`]: plumbing (queues, messages, shared state, stop events, sockets);
//! - [`config`], the settings.
//!
//! [`tools`] holds the operator tools beside the server (`baton dev`, data directory
//! inspection).
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod etcd;
pub mod peer;
pub mod runtime;
pub mod startup;
pub mod tools;
pub mod write;
pub mod zk;
