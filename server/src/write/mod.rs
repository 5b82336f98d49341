//! The write path: everything between a client's write (or connect, or sync) and its
//! answer, with no client protocol in it. [`path`] is the state machine — sequencing on the
//! leader, forwarding elsewhere, refusal ordering, sessions and their expiry, connect
//! admission, what a role change does to serving — with no IO, unit-tested input by input;
//! [`driver`] is the thin glommio task on shard 0 that feeds it and carries out its effects,
//! and is the replica's state machine. [`session`] tracks deadlines and passwords;
//! [`forward`] is what servers send each other about client writes.
//!
//! A front (`crate::zk` today, an etcd front later) talks to it only through
//! `crate::runtime`'s messages.

pub mod driver;
pub mod forward;
pub mod path;
pub mod session;
#[cfg(test)]
mod tests;
