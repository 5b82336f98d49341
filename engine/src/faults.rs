//! Failpoints: named places where tests inject disk, network and apply faults into a real
//! `baton` process (the approach of etcd's gofail and TiKV's `fail` crate).
//!
//! Compiled in only with the `failpoints` feature, which the test package turns on; without
//! it [`injected`] is a constant `None` and every check below folds away. A test configures
//! a point by name with the `fail` crate's actions, giving the fault as the `return`
//! argument:
//!
//! ```text
//! FAILPOINTS='wal-fdatasync=return(eio)'            every WAL fdatasync fails with EIO
//! FAILPOINTS='wal-fdatasync=1*return(delay:2000)'   the next one takes two extra seconds
//! FAILPOINTS='wal-spare=return(enospc)'             preparing a WAL segment finds the disk full
//! FAILPOINTS='apply=panic'                          the process dies applying an entry
//! ```
//!
//! | point | where |
//! |---|---|
//! | [`WAL_WRITE`] | before a WAL batch's write |
//! | [`WAL_FDATASYNC`] | before a WAL batch's fdatasync |
//! | [`WAL_DURABLE`] | after a WAL batch's fdatasync returned, before anyone is told |
//! | [`WAL_SPARE`] | preparing the next WAL segment (where a full disk shows first) |
//! | [`SNAPSHOT_WRITE`] | writing a snapshot's bytes |
//! | [`SNAPSHOT_RENAME`] | renaming a written snapshot into place |
//! | [`EPOCHS_WRITE`] | writing the epochs file |
//! | `peer-send`, `peer-recv` | the server's peer links (in `baton-server`) |
//! | `apply` | applying a committed entry (in `baton-server`) |

use std::io;
use std::time::Duration;

/// Before a WAL batch's write.
pub const WAL_WRITE: &str = "wal-write";
/// Before a WAL batch's fdatasync.
pub const WAL_FDATASYNC: &str = "wal-fdatasync";
/// After a WAL batch's fdatasync returned, before its entries are reported durable.
pub const WAL_DURABLE: &str = "wal-durable";
/// Preparing the next WAL segment (preallocation and zero-fill).
pub const WAL_SPARE: &str = "wal-spare";
/// Writing a snapshot's bytes.
pub const SNAPSHOT_WRITE: &str = "snapshot-write";
/// Renaming a written snapshot into place.
pub const SNAPSHOT_RENAME: &str = "snapshot-rename";
/// Writing the epochs file.
pub const EPOCHS_WRITE: &str = "epochs-write";

/// A fault a failpoint injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this OS error (`eio`, `enospc`, or a number).
    Error(i32),
    /// The operation is held back this long first (a stalled disk or a slow link).
    Delay(Duration),
}

impl Fault {
    /// Parses a failpoint's `return` argument; `None` when it is not a fault (a bare
    /// `return` means EIO).
    pub fn parse(arg: Option<&str>) -> Option<Fault> {
        let arg = arg.unwrap_or("eio").trim();
        if let Some(ms) = arg.strip_prefix("delay:") {
            return ms.parse().ok().map(|ms| Fault::Delay(Duration::from_millis(ms)));
        }
        match arg {
            "eio" => Some(Fault::Error(libc::EIO)),
            "enospc" => Some(Fault::Error(libc::ENOSPC)),
            n => n.parse().ok().map(Fault::Error),
        }
    }

    /// The error this fault makes an operation fail with, if it is one.
    pub fn error(self, point: &str) -> Option<io::Error> {
        match self {
            Fault::Error(code) => {
                tracing::warn!(point, code, "failpoint: injecting an I/O error");
                Some(io::Error::from_raw_os_error(code))
            }
            Fault::Delay(_) => None,
        }
    }
}

/// The fault configured at `point`, if any (always `None` without the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub fn injected(point: &str) -> Option<Fault> {
    fail::fail_point!(point, |arg: Option<String>| Fault::parse(arg.as_deref()));
    None
}

/// The fault configured at `point`, if any (always `None` without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn injected(_point: &str) -> Option<Fault> {
    None
}

/// For async I/O on a glommio executor: waits out an injected delay (without blocking the
/// executor) or returns an injected error.
pub async fn io(point: &str) -> io::Result<()> {
    match injected(point) {
        None => Ok(()),
        Some(Fault::Delay(d)) => {
            tracing::warn!(point, ms = d.as_millis() as u64, "failpoint: delaying an I/O");
            glommio::timer::sleep(d).await;
            Ok(())
        }
        Some(fault) => fault.error(point).map_or(Ok(()), Err),
    }
}

/// For blocking I/O on a thread of its own: sleeps out an injected delay or returns an
/// injected error.
pub fn io_blocking(point: &str) -> io::Result<()> {
    match injected(point) {
        None => Ok(()),
        Some(Fault::Delay(d)) => {
            tracing::warn!(point, ms = d.as_millis() as u64, "failpoint: delaying an I/O");
            std::thread::sleep(d);
            Ok(())
        }
        Some(fault) => fault.error(point).map_or(Ok(()), Err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_arguments_parse() {
        assert_eq!(Fault::parse(None), Some(Fault::Error(libc::EIO)));
        assert_eq!(Fault::parse(Some("enospc")), Some(Fault::Error(libc::ENOSPC)));
        assert_eq!(Fault::parse(Some("5")), Some(Fault::Error(5)));
        assert_eq!(Fault::parse(Some("delay:2000")), Some(Fault::Delay(Duration::from_secs(2))));
        assert_eq!(Fault::parse(Some("delay:soon")), None);
        assert_eq!(Fault::parse(Some("sometimes")), None);
    }

    #[test]
    fn an_injected_error_is_the_os_error() {
        let e = Fault::Error(libc::ENOSPC).error("x").expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(Fault::Delay(Duration::ZERO).error("x").is_none());
    }
}
