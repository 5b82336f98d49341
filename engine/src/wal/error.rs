use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::log::Zxid;

/// Errors of the write-ahead log.
///
/// API errors ([`WalError::EntryTooLarge`], [`WalError::ZxidOrder`], [`WalError::QueueFull`],
/// [`WalError::Busy`]) leave the WAL unchanged and usable. Every other error from a write or
/// fsync poisons the WAL: it refuses all further appends with [`WalError::Poisoned`], because
/// after a failed fsync the kernel may have dropped dirty pages and retrying would lie about
/// durability (the PostgreSQL "fsyncgate" lesson). The node must restart and recover.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system I/O error.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The disk is full; nothing already durable was touched. Preparing the next segment
    /// retries it (see [`super::Wal::out_of_space`]); anywhere else it poisons the WAL.
    #[error("disk full while writing {path}")]
    DiskFull {
        /// File being written.
        path: PathBuf,
    },
    /// A record or header failed verification somewhere other than the torn tail.
    #[error("corrupt WAL at {path} offset {offset}: {reason}")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A segment written by an incompatible format version.
    #[error("WAL segment {path} has format version {found}; this build reads version {supported}")]
    Version {
        /// Segment file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// An entry larger than the configured limit (or empty).
    #[error("entry of {len} bytes is outside 1..={max} bytes")]
    EntryTooLarge {
        /// Payload size.
        len: usize,
        /// Configured `entry_bytes_max`.
        max: usize,
    },
    /// Entries must be appended in strictly increasing zxid order.
    #[error("zxid {zxid} is not above the last appended zxid {last}")]
    ZxidOrder {
        /// The zxid offered.
        zxid: Zxid,
        /// The last zxid accepted.
        last: Zxid,
    },
    /// More bytes are queued than `queued_bytes_max`; wait for [`super::Wal::ready`].
    #[error("WAL queue is full ({queued} bytes queued, limit {max})")]
    QueueFull {
        /// Bytes queued now.
        queued: usize,
        /// Configured limit.
        max: usize,
    },
    /// The operation needs an idle WAL (no appends in flight).
    #[error("WAL is busy: {0}")]
    Busy(&'static str),
    /// The WAL stopped after a fatal error; this is the error that stopped it.
    #[error("WAL stopped after a fatal error: {0}")]
    Poisoned(Arc<WalError>),
    /// Inconsistent settings.
    #[error("invalid WAL configuration: {0}")]
    Config(&'static str),
    /// The WAL was closed.
    #[error("WAL is closed")]
    Closed,
}

impl WalError {
    /// Wraps an I/O error with the path it concerns, recognising a full disk.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> WalError {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            WalError::DiskFull { path }
        } else {
            WalError::Io { path, source }
        }
    }

    /// Converts a glommio error, keeping the path.
    pub(crate) fn glommio<T>(path: impl Into<PathBuf>, err: glommio::GlommioError<T>) -> WalError {
        // glommio's conversion keeps an enhanced error's text but not its OS error code,
        // which tells a full disk from a failed one.
        let code = match &err {
            glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
            _ => None,
        };
        match code {
            Some(libc::ENOSPC) => WalError::DiskFull { path: path.into() },
            _ => WalError::io(path, io::Error::from(err)),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt { path: path.into(), offset, reason: reason.into() }
    }
}
