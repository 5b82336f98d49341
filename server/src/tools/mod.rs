//! Operator tools beside the server: `baton dev` ([`dev`], a local ensemble) and the
//! inspection of a data directory ([`inspect`]: WAL verify/dump, snapshot list).

pub mod dev;
pub mod inspect;
