//! Server settings, from flags (a TOML file comes later). Every limit is explicit.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of one Baton server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address for ZooKeeper clients (and four-letter words).
    #[arg(long, default_value = "127.0.0.1:2181")]
    pub client_addr: SocketAddr,
    /// Directory for the WAL (`wal/`) and snapshots (`snapshots/`).
    #[arg(long, default_value = "baton-data")]
    pub data_dir: PathBuf,
    /// Shards: glommio executors (threads), each accepting clients on the port; 0 = one per
    /// core this process may run on.
    #[arg(long, default_value_t = 0)]
    pub cores: usize,
    /// ZooKeeper's tick: session timeouts are negotiated within [2, 20] ticks.
    #[arg(long, default_value_t = 2000)]
    pub tick_ms: u64,
    /// Largest request frame accepted (ZooKeeper's jute.maxbuffer); a larger one closes the
    /// connection.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frame_bytes: usize,
    /// Most client connections at once; more are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most watches one connection may hold.
    #[arg(long, default_value_t = 100_000)]
    pub max_watches_per_connection: usize,
    /// Four-letter words answered on the client port.
    #[arg(long, value_delimiter = ',', default_value = "ruok,srvr,stat,mntr,conf,cons,wchs,envi,isro")]
    pub four_letter_words: Vec<String>,
    /// Refuse TTL nodes (ZooKeeper's extendedTypesEnabled=false).
    #[arg(long)]
    pub disable_ttl: bool,
    /// Write a snapshot after this many entries (0: never).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every_entries: u64,
    /// Snapshots to keep (WAL segments they cover are released).
    #[arg(long, default_value_t = 3)]
    pub snapshots_to_keep: usize,
    /// Size of each preallocated WAL segment file (ZooKeeper's preAllocSize); a multiple of
    /// 4096, at least 64 KiB.
    #[arg(long, default_value_t = 64 << 20)]
    pub wal_segment_bytes: u64,
    /// Released WAL segments kept to be reused as new ones instead of deleted (each holds
    /// `wal_segment_bytes` of disk while it waits); 0 deletes them.
    #[arg(long, default_value_t = 2)]
    pub wal_recycle_segments: usize,
}

impl ServerConfig {
    /// Smallest session timeout granted.
    pub fn min_session_timeout_ms(&self) -> i32 {
        (self.tick_ms * 2).min(i32::MAX as u64) as i32
    }

    /// Largest session timeout granted.
    pub fn max_session_timeout_ms(&self) -> i32 {
        (self.tick_ms * 20).min(i32::MAX as u64) as i32
    }

    /// A configuration for tests: the given address and directory, defaults otherwise.
    pub fn for_test(client_addr: SocketAddr, data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            client_addr,
            data_dir,
            cores: 2,
            tick_ms: 500,
            max_frame_bytes: 1 << 20,
            max_connections: 1000,
            max_watches_per_connection: 100_000,
            four_letter_words: "ruok,srvr,stat,mntr,conf,cons,wchs,envi,isro".split(',').map(String::from).collect(),
            disable_ttl: false,
            snapshot_every_entries: 100_000,
            snapshots_to_keep: 3,
            wal_segment_bytes: 64 << 20,
            wal_recycle_segments: 2,
        }
    }
}
