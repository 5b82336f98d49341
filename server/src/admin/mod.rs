//! What operators ask a server: ZooKeeper's four-letter words ([`fourlw`]), read from the
//! counters and status the other layers publish in `crate::runtime::Shared`.

pub mod fourlw;
