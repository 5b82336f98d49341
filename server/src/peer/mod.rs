//! Replication between servers: peer links ([`transport`]) and the driver of the Zab core
//! ([`replica`]). Not yet wired into the client-serving runtime (issue 4).

pub mod replica;
pub mod transport;

#[cfg(test)]
mod tests;
