//! Server settings, from flags or a TOML file whose keys are the flag names. Every limit is
//! explicit.

use base64::Engine as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use baton_engine::zab::ServerId;

/// One member of the ensemble, as `--peer ID=HOST:PORT[:observer][;ETCD_HOST:ETCD_PORT]`
/// names it (zoo.cfg's `server.ID=host:port[:observer][;client address]`; one port carries
/// election and replication alike). HOST is an address or a name resolved at start. The
/// address after `;` is where the member serves etcd clients: etcd's MemberList reports it
/// as the member's client URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Server id (ZooKeeper's myid), 1..=255.
    pub id: ServerId,
    /// Its peer address.
    pub addr: SocketAddr,
    /// A non-voting observer.
    pub observer: bool,
    /// Where it serves etcd clients, if the membership says.
    pub etcd: Option<SocketAddr>,
}

impl std::str::FromStr for Peer {
    type Err = String;

    fn from_str(text: &str) -> Result<Peer, String> {
        let (id, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text}: expected ID=HOST:PORT[:observer][;ETCD_HOST:ETCD_PORT]"))?;
        let (rest, etcd) = match rest.split_once(';') {
            Some((peer, etcd)) => (peer, Some(resolve(text, etcd)?)),
            None => (rest, None),
        };
        let id: ServerId = id.trim().parse().map_err(|_| format!("{text}: the server id must be a number"))?;
        if !(1..=255).contains(&id) {
            return Err(format!("{text}: server ids go from 1 to 255"));
        }
        let (addr, observer) = match rest.strip_suffix(":observer") {
            Some(a) => (a, true),
            None => (rest.strip_suffix(":participant").unwrap_or(rest), false),
        };
        Ok(Peer { id, addr: resolve(text, addr)?, observer, etcd })
    }
}

/// HOST:PORT, where HOST may be a name (resolved once, at start) or an address.
fn resolve(text: &str, addr: &str) -> Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(addr.trim())
        .map_err(|e| format!("{text}: {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text}: {addr} resolves to no address"))
}

/// Where a port that can be closed listens (the etcd front's, the admin server's): HOST:PORT,
/// or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if s == "off" {
            return Ok(ListenAddr(None));
        }
        s.parse().map(|a| ListenAddr(Some(a))).map_err(|e| format!("{s:?} is neither HOST:PORT nor off: {e}"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// Settings of one Baton server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Address for ZooKeeper clients (and four-letter words), or `off` (for example when
    /// only `--secure-client-addr` should serve them, as ZooKeeper without a clientPort).
    #[arg(long, default_value = "127.0.0.1:2181")]
    pub client_addr: ListenAddr,
    /// Address for etcd v3 clients (gRPC: KV, Watch, Lease, Maintenance, Cluster), or `off`.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub etcd_addr: ListenAddr,
    /// Address for ZooKeeper clients over TLS (ZooKeeper's secureClientPort), or `off`. Needs
    /// `--tls-cert` and `--tls-key`.
    #[arg(long, default_value = "off")]
    pub secure_client_addr: ListenAddr,
    /// PEM file of this server's certificate chain, leaf first (for the secure client port).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of CA certificates: clients of the secure port must present a certificate
    /// one of them signed (ZooKeeper's `ssl.clientAuth=need` with a truststore). Without it,
    /// clients are not asked for one.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve etcd clients over TLS with `--tls-cert` and `--tls-key` (and require client
    /// certificates with `--tls-client-ca`), as etcd's `--cert-file`, `--key-file` and
    /// `--trusted-ca-file`; the etcd port then speaks TLS only.
    #[arg(long)]
    pub etcd_tls: bool,
    /// TLS between the servers of the ensemble (ZooKeeper's `sslQuorum`): each presents its
    /// `--tls-cert` and requires the other's, signed by a CA of `--tls-peer-ca`; a server
    /// dialing a peer checks that its certificate names the peer's address (an IP address
    /// in its subjectAltName). A peer without such a certificate is refused, with a log line.
    #[arg(long)]
    pub peer_tls: bool,
    /// PEM file of the CA certificates that sign the servers' certificates (`--peer-tls`).
    #[arg(long, value_name = "PEM")]
    pub tls_peer_ca: Option<PathBuf>,
    /// Address of the admin HTTP server (ZooKeeper's AdminServer, `admin.serverAddress` and
    /// `admin.serverPort`): `/metrics` for Prometheus, ZooKeeper's admin commands as JSON
    /// under `/commands/`, `/health` and `/ready`; or `off`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub admin_addr: ListenAddr,
    /// Most operations in one etcd Txn's compare, success or failure list (etcd's
    /// --max-txn-ops).
    #[arg(long, default_value_t = 128)]
    pub etcd_max_txn_ops: usize,
    /// Largest etcd request, in bytes (etcd's --max-request-bytes); gRPC messages over this
    /// plus 512 KiB are refused before they are decoded.
    #[arg(long, default_value_t = 1_572_864)]
    pub etcd_max_request_bytes: usize,
    /// How often etcd watchers that asked for progress notifications get one (etcd's
    /// --experimental-watch-progress-notify-interval, 10 minutes).
    #[arg(long, default_value_t = 600_000)]
    pub etcd_watch_progress_notify_ms: u64,
    /// The etcd keyspace's space quota in bytes (etcd's --quota-backend-bytes, 2 GiB): a
    /// write that would take it past this raises the NOSPACE alarm, and writes that add data
    /// are refused until the alarm is disarmed. 0: no quota.
    #[arg(long, default_value_t = 2 << 30)]
    pub etcd_quota_bytes: u64,
    /// Most HTTP/2 streams (calls under way, watch and keep-alive streams) one etcd client
    /// connection may have open at once (etcd's --max-concurrent-streams; no limit by
    /// default, as etcd's); a client waits for one to end before it opens another.
    #[arg(long, default_value_t = u32::MAX)]
    pub etcd_max_concurrent_streams: u32,
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
    /// Largest request frame accepted (ZooKeeper's jute.maxbuffer, whose default is 0xfffff,
    /// one byte under 1 MiB); a larger one closes the connection.
    #[arg(long, default_value_t = 0xfffff)]
    pub max_frame_bytes: usize,
    /// Most client connections at once; more are refused.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most connections from one client address (ZooKeeper's maxClientCnxns; 0: no limit);
    /// more are refused at once.
    #[arg(long, default_value_t = 60)]
    pub max_client_cnxns: usize,
    /// Most watches one connection may hold.
    #[arg(long, default_value_t = 100_000)]
    pub max_watches_per_connection: usize,
    /// Four-letter words answered on the client port.
    #[arg(long, value_delimiter = ',', default_value = "ruok,srvr,stat,mntr,conf,cons,wchs,envi,isro,dump")]
    pub four_letter_words: Vec<String>,
    /// Refuse TTL nodes (ZooKeeper's extendedTypesEnabled=false).
    #[arg(long)]
    pub disable_ttl: bool,
    /// ZooKeeper's superDigest, `user:BASE64(SHA1(user:password))` (what
    /// `DigestAuthenticationProvider.generateDigest` prints): a client that runs `addauth digest
    /// user:password` with it passes every ACL check.
    #[arg(long, value_name = "USER:DIGEST")]
    pub super_digest: Option<String>,
    /// A SASL DIGEST-MD5 user, NAME:PASSWORD, as `user_NAME="PASSWORD"` in ZooKeeper's JAAS
    /// `Server` section; repeat for each user (TOML: `sasl_users = ["bob:secret", …]`). A
    /// client that logs in as NAME holds the id `sasl:NAME`.
    #[arg(long = "sasl-user", visible_alias = "sasl-users", value_name = "NAME:PASSWORD")]
    pub sasl_users: Vec<String>,
    /// ZooKeeper's read-only mode (`readonlymode.enabled`): a member of an ensemble that has
    /// been without a quorum for max(2 s, a tick) serves clients that ask for read-only
    /// sessions (reads succeed, writes get NotReadOnly, `isro` says `ro`) until it rejoins
    /// one; then it closes them and they reconnect as read-write clients. No effect on a
    /// standalone server.
    #[arg(long)]
    pub read_only_mode: bool,
    /// Refuse a create or setData past a quota's hard limit (zkCli's `setquota -N`/`-B`) with
    /// QuotaExceeded, and log one past a soft limit (ZooKeeper's zookeeper.enforceQuota).
    /// Off: quotas are only counted, in `/zookeeper/quota`.
    #[arg(long)]
    pub enforce_quota: bool,
    /// Write a snapshot about every this many entries (0: never): each server draws each
    /// snapshot point between half and all of it, as ZooKeeper's snapCount, so that the
    /// servers of an ensemble do not all snapshot at once. Either way, never before the log
    /// has grown by half the last snapshot's size (a snapshot costs what its image does).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every_entries: u64,
    /// Also write a snapshot once this many bytes of log entries were applied since the last
    /// one (0: never), however few they are (ZooKeeper's snapSizeLimitInKb).
    #[arg(long, default_value_t = 1 << 30)]
    pub snapshot_every_bytes: u64,
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
    /// This server's id in its ensemble (ZooKeeper's myid).
    #[arg(long, default_value_t = 1)]
    pub server_id: ServerId,
    /// A member of the ensemble: ID=HOST:PORT, or ID=HOST:PORT:observer for a non-voting
    /// observer, either followed by `;HOST:PORT` where it serves etcd clients (etcd's
    /// MemberList reports it); repeat (or separate with commas) for each, this server
    /// included. None: a standalone server.
    #[arg(long = "peer", value_delimiter = ',')]
    pub peers: Vec<Peer>,
    /// The ensemble's name: peers must present the same (with the same members) or they are
    /// refused, so that a server pointed at another ensemble's peer port is told so.
    #[arg(long, default_value = "baton")]
    pub ensemble_name: String,
    /// For an observer: the observer it follows instead of the leader (a tree of observers).
    #[arg(long)]
    pub observer_upstream: Option<ServerId>,
    /// The replication protocol's tick (heartbeats, election pacing).
    #[arg(long, default_value_t = 100)]
    pub peer_tick_ms: u64,
    /// Peer ticks a follower may take to connect and synchronise (ZooKeeper's initLimit).
    #[arg(long, default_value_t = 100)]
    pub init_limit: u64,
    /// Peer ticks without hearing from the leader (or a quorum) before giving up on it
    /// (ZooKeeper's syncLimit).
    #[arg(long, default_value_t = 10)]
    pub sync_limit: u64,
    /// Largest frame accepted from a peer: a batch of log entries (a DIFF piece or proposals,
    /// up to 1,024 entries each) must fit; a SNAP travels in 1 MiB chunks whatever the tree's
    /// size. A larger frame closes that link.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_peer_frame_bytes: usize,
    /// If this server's log fails verification, set it and the snapshots aside (to
    /// `<data-dir>/discarded-<time>/`) and be synchronised from the leader, voting for no one
    /// until then; on a healthy log, nothing. For a member of an ensemble whose log is
    /// damaged; the others must make a quorum.
    #[arg(long)]
    pub resync: bool,
    /// Bytes queued for one peer before its link counts as broken, once nothing more has
    /// gone into its connection for a second: a follower that stopped reading is dropped and
    /// resynchronised instead of holding the leader back (one that reads slowly is not).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_peer_queue_bytes: usize,
}

impl ServerConfig {
    /// The scheme of etcd client URLs (MemberList): `https` with `--etcd-tls`.
    pub fn etcd_scheme(&self) -> &'static str {
        if self.etcd_tls {
            "https"
        } else {
            "http"
        }
    }

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
            client_addr: ListenAddr(Some(client_addr)),
            etcd_addr: ListenAddr(None),
            admin_addr: ListenAddr(None),
            secure_client_addr: ListenAddr(None),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            etcd_tls: false,
            peer_tls: false,
            tls_peer_ca: None,
            etcd_max_txn_ops: 128,
            etcd_max_request_bytes: 1_572_864,
            etcd_watch_progress_notify_ms: 600_000,
            etcd_quota_bytes: 2 << 30,
            etcd_max_concurrent_streams: u32::MAX,
            data_dir,
            cores: 2,
            tick_ms: 500,
            max_frame_bytes: 0xfffff,
            max_connections: 1000,
            max_watches_per_connection: 100_000,
            four_letter_words: "ruok,srvr,stat,mntr,conf,cons,wchs,envi,isro,dump"
                .split(',')
                .map(String::from)
                .collect(),
            disable_ttl: false,
            super_digest: None,
            sasl_users: Vec::new(),
            read_only_mode: false,
            enforce_quota: false,
            max_client_cnxns: 60,
            snapshot_every_entries: 100_000,
            snapshot_every_bytes: 1 << 30,
            snapshots_to_keep: 3,
            wal_segment_bytes: 64 << 20,
            wal_recycle_segments: 2,
            server_id: 1,
            peers: Vec::new(),
            ensemble_name: "baton".into(),
            observer_upstream: None,
            peer_tick_ms: 50,
            init_limit: 100,
            sync_limit: 10,
            max_peer_frame_bytes: 1 << 30,
            max_peer_queue_bytes: 64 << 20,
            resync: false,
        }
    }

    /// Whether this server is an observer.
    pub fn is_observer(&self) -> bool {
        self.peers.iter().any(|p| p.id == self.server_id && p.observer)
    }

    /// Checks the ensemble settings: this server is a member, ids are unique, voters exist.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(digest) = &self.super_digest {
            let well_formed = digest.split_once(':').is_some_and(|(user, hash)| {
                !user.is_empty() && base64::engine::general_purpose::STANDARD.decode(hash).is_ok_and(|h| h.len() == 20)
            });
            if !well_formed {
                return Err(format!(
                    "--super-digest {digest:?} is not user:BASE64(SHA1(user:password)) (for example super:D/InIHSb7yEEbrWz8b9l71RjZJU= for super:test)"
                ));
            }
        }
        if self.secure_client_addr.0.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(format!(
                "--secure-client-addr {} needs --tls-cert and --tls-key (PEM files)",
                self.secure_client_addr
            ));
        }
        if self.peer_tls && (self.tls_cert.is_none() || self.tls_key.is_none() || self.tls_peer_ca.is_none()) {
            return Err("--peer-tls needs --tls-cert, --tls-key and --tls-peer-ca (PEM files)".into());
        }
        if self.etcd_tls && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("--etcd-tls needs --tls-cert and --tls-key (PEM files)".into());
        }
        if let Some(bad) = self.sasl_users.iter().find(|u| u.split_once(':').is_none_or(|(n, _)| n.is_empty())) {
            return Err(format!("--sasl-user {bad:?} is not NAME:PASSWORD"));
        }
        if self.peers.is_empty() {
            if self.resync {
                return Err(
                    "--resync is for a member of an ensemble: a standalone server has no leader to resynchronise from"
                        .into(),
                );
            }
            return Ok(());
        }
        if self.resync && self.peers.iter().filter(|p| !p.observer).count() < 3 && !self.is_observer() {
            return Err(
                "--resync needs the other voters to make a quorum without this one (three voters or more)".into()
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &self.peers {
            if !ids.insert(p.id) {
                return Err(format!("server id {} is listed twice", p.id));
            }
        }
        if !ids.contains(&self.server_id) {
            return Err(format!("--server-id {} is not among the --peer entries", self.server_id));
        }
        if !self.peers.iter().any(|p| !p.observer) {
            return Err("the ensemble has no voter".into());
        }
        if let Some(up) = self.observer_upstream {
            if !self.is_observer() || !self.peers.iter().any(|p| p.id == up && p.observer) {
                return Err("--observer-upstream is for an observer following another observer".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_as_zoo_cfg_server_lines() {
        let p: Peer = "3=127.0.0.1:2888:observer".parse().expect("observer");
        assert_eq!((p.id, p.addr.port(), p.observer), (3, 2888, true));
        let p: Peer = "1=localhost:2889".parse().expect("a host name");
        assert_eq!((p.id, p.addr.port(), p.observer, p.etcd), (1, 2889, false, None));
        let p: Peer = "2=127.0.0.1:2888:observer;127.0.0.2:2380".parse().expect("with an etcd address");
        assert_eq!((p.id, p.observer, p.etcd), (2, true, Some("127.0.0.2:2380".parse().expect("addr"))));
        let bad = ["1", "x=127.0.0.1:1", "0=127.0.0.1:1", "256=127.0.0.1:1", "1=127.0.0.1", "1=127.0.0.1:1;nowhere"];
        for bad in bad {
            assert!(bad.parse::<Peer>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn ensembles_are_checked() {
        let mut c = ServerConfig::for_test("127.0.0.1:2181".parse().expect("addr"), "d".into());
        assert!(c.validate().is_ok(), "standalone");
        c.peers = vec!["1=127.0.0.1:1".parse().expect("peer"), "2=127.0.0.1:2:observer".parse().expect("peer")];
        assert!(c.validate().is_ok());
        c.server_id = 3;
        assert!(c.validate().is_err(), "not a member");
        c.server_id = 2;
        c.observer_upstream = Some(1);
        assert!(c.validate().is_err(), "an upstream must be an observer");
        c.peers = vec!["1=127.0.0.1:1:observer".parse().expect("peer")];
        c.server_id = 1;
        c.observer_upstream = None;
        assert!(c.validate().is_err(), "no voter");
    }
}
