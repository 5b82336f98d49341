//! What operators ask a server: ZooKeeper's four-letter words on the client port
//! ([`fourlw`]), and the admin HTTP server ([`http`]) with ZooKeeper's admin commands as JSON
//! ([`commands`]) and Prometheus metrics ([`metrics`]); all read from the counters and status
//! the other layers publish in `crate::runtime::Shared`.

pub mod commands;
pub mod fourlw;
pub mod http;
pub mod metrics;
