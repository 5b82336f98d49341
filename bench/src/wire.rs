//! The `wire` driver: the ZooKeeper client protocol spoken directly, for the closed-loop
//! workloads whose cost on a small shared machine should be the server's, not the client
//! library's.
//!
//! Each session is one TCP connection with `depth` requests in flight, exactly as the
//! `crate` driver's `depth` tasks keep them. What differs is the client's own cost: the
//! replies that one read brings in are answered with the next requests in one write, so a
//! request costs the load generator about two system calls per batch instead of about two
//! per request (measured with `perf stat` against the `zookeeper-client` crate: 1.4
//! `recvfrom` and 0.65 `writev` per request plus a second thread, about one core for 240K
//! reads/s on this 2-core machine, which the server being measured then does not get).
//! ZooKeeper answers a session's requests in the order they were sent, so replies are
//! matched to requests by their position; a reply whose xid is not the one expected, an
//! error code, or a getData reply of the wrong length stops the run with an error.
//!
//! With `--tls-ca`, each session speaks TLS (rustls, verifying the server's certificate for
//! its IP address against that CA), for a server's secure client port: the same load, so
//! that its cost against plaintext is measured at the same operating point.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{histogram, Load, Mix, Window};
use crate::workload::Workload;

const OP_CREATE: i32 = 1;
const OP_DELETE: i32 = 2;
const OP_GET_DATA: i32 = 4;
const OP_SET_DATA: i32 = 5;
const OP_CLOSE_SESSION: i32 = -11;
/// Create modes, in ZooKeeper's numbering.
const PERSISTENT: i32 = 0;
const EPHEMERAL: i32 = 1;
/// ZooKeeper's NodeExists error code.
const NODE_EXISTS: i32 = -110;
/// Reply header: xid, zxid, err.
const REPLY_HEADER: usize = 16;
/// Largest reply frame accepted (a getData of the value plus its Stat, with room to spare).
const MAX_FRAME: usize = 1 << 20;

/// Whether the wire driver runs `workload` (the others need the crate's recipes or watches).
pub fn supports(workload: Workload) -> bool {
    matches!(workload, Workload::Write | Workload::Read | Workload::Mixed | Workload::CreateDelete)
}

/// A request buffer under construction (jute: big-endian, strings and buffers length-prefixed).
struct Out(Vec<u8>);

impl Out {
    fn int(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn long(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.int(v.len() as i32);
        self.0.extend_from_slice(v);
        self
    }
    fn boolean(&mut self, v: bool) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    /// Starts a frame; returns where its length goes.
    fn begin(&mut self) -> usize {
        let at = self.0.len();
        self.int(0);
        at
    }
    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at - 4) as i32;
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(v)
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(v)
}

/// A session's connection: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How sessions reach the server: over TLS with a connector.
pub type Tls = Option<tokio_rustls::TlsConnector>;

/// A TLS connector that trusts the CA certificates in the PEM file `ca` (`--tls-ca`).
pub fn connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    // ring, as the server: rustls 0.23.48 deprecates its provider for lacking post-quantum
    // key exchange, which neither end here needs.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// Connects to `target` (host:port), over TLS with `tls` (the certificate must name the
/// address's IP).
async fn open(target: &str, tls: &Tls) -> anyhow::Result<Box<dyn Io>> {
    let stream = TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let Some(tls) = tls else { return Ok(Box::new(stream)) };
    let ip = stream.peer_addr()?.ip();
    let stream = tls.connect(ip.into(), stream).await.with_context(|| format!("TLS handshake with {target}"))?;
    Ok(Box::new(stream))
}

/// Sends `out` (then clears it) and reads one reply frame of at least `min` bytes (and
/// under 4 KiB: the handshake's replies are small).
async fn exchange(stream: &mut Box<dyn Io>, out: &mut Out, min: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    stream.write_all(&out.0).await?;
    stream.flush().await?;
    out.0.clear();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.with_context(|| format!("reading {what}"))?;
    let len = i32::from_be_bytes(len);
    ensure!(len >= min as i32 && len < 4096, "{what} of {len} bytes");
    let mut frame = vec![0u8; len as usize];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// A session for the few requests around a run (the bench's root, the check that writes
/// happened), one at a time: what the `zookeeper-client` crate does otherwise, for the
/// connections the crate cannot make (TLS).
pub struct Admin {
    stream: Box<dyn Io>,
    out: Out,
}

impl Admin {
    /// Opens a session (30 s timeout) on `target`.
    pub async fn connect(target: &str, tls: &Tls) -> anyhow::Result<Admin> {
        let mut stream = open(target, tls).await?;
        let mut out = Out(Vec::with_capacity(4096));
        let at = out.begin();
        // ConnectRequest: protocol version, last zxid seen, timeout, session id, password,
        // read-only.
        out.int(0).long(0).int(30_000).long(0).bytes(&[0; 16]).boolean(false);
        out.end(at);
        let response = exchange(&mut stream, &mut out, 20, "the connect response").await?;
        ensure!(be_i32(&response, 4) > 0 && be_i64(&response, 8) != 0, "the server refused the session");
        Ok(Admin { stream, out })
    }

    /// Creates the persistent znode `path` (open to anyone); ZooKeeper's error code (0: done).
    pub async fn create(&mut self, path: &str, value: &[u8]) -> anyhow::Result<i32> {
        let at = self.out.begin();
        self.out.int(0).int(OP_CREATE).bytes(path.as_bytes()).bytes(value);
        self.out.int(1).int(31).bytes(b"world").bytes(b"anyone").int(PERSISTENT);
        self.out.end(at);
        let reply = exchange(&mut self.stream, &mut self.out, REPLY_HEADER, "the create reply").await?;
        Ok(be_i32(&reply, 12))
    }

    /// The value of `path` and its version.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(Vec<u8>, i32)> {
        let at = self.out.begin();
        self.out.int(0).int(OP_GET_DATA).bytes(path.as_bytes()).boolean(false);
        self.out.end(at);
        let reply = exchange(&mut self.stream, &mut self.out, REPLY_HEADER, "the getData reply").await?;
        let err = be_i32(&reply, 12);
        ensure!(err == 0, "getData {path} failed with ZooKeeper error {err}");
        ensure!(reply.len() >= REPLY_HEADER + 4, "a getData reply without data");
        let len = usize::try_from(be_i32(&reply, REPLY_HEADER)).unwrap_or(0);
        // The Stat after the data: czxid, mzxid, ctime, mtime, then version.
        let stat = REPLY_HEADER + 4 + len;
        ensure!(reply.len() >= stat + 36, "a getData reply of {} bytes", reply.len());
        Ok((reply[REPLY_HEADER + 4..stat].to_vec(), be_i32(&reply, stat + 32)))
    }
}

/// What a slot (one of a session's `depth` requests in flight) sends next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Get,
    Set,
    Create,
    Delete,
}

/// One request in flight: its slot, xid, what it was, and when its operation started (for
/// create-delete, the create's start: the pair is one operation, as in the crate driver).
struct Sent {
    slot: usize,
    xid: i32,
    step: Step,
    start: Instant,
}

/// One session of the wire driver.
struct Session {
    stream: Box<dyn Io>,
    key: Vec<u8>,
    /// setData on `/fill/n…` below this, drawn at random (see `Load::spread`); 0: on `key`.
    spread: u64,
    /// The draw's xorshift state.
    draw: u64,
    value: Vec<u8>,
    workload: Workload,
    mix: Mix,
    next_xid: i32,
    in_flight: VecDeque<Sent>,
    out: Out,
    input: Vec<u8>,
}

impl Session {
    async fn connect(
        target: &str,
        tls: &Tls,
        key: String,
        value: Vec<u8>,
        workload: Workload,
        mix: Mix,
    ) -> anyhow::Result<Session> {
        let mut admin = Admin::connect(target, tls).await?;
        // The session's key, created through the session itself so that its reads see it
        // whichever server of an ensemble it is on.
        let err = admin.create(&key, &value).await?;
        ensure!(err == 0 || err == NODE_EXISTS, "creating {key} failed with ZooKeeper error {err}");
        let Admin { stream, out, .. } = admin;
        Ok(Session {
            stream,
            draw: 0x9e37_79b9_7f4a_7c15 ^ seed_of(key.as_bytes()),
            key: key.into_bytes(),
            spread: 0,
            value,
            workload,
            mix,
            next_xid: 1,
            in_flight: VecDeque::new(),
            out,
            input: Vec::with_capacity(64 * 1024),
        })
    }

    /// The ephemeral znode of `slot` (create-delete).
    fn own_path(&self, slot: usize) -> Vec<u8> {
        let mut p = self.key.clone();
        p.extend_from_slice(format!("-e{slot}").as_bytes());
        p
    }

    /// Queues one request for `slot` in the output buffer.
    fn queue(&mut self, slot: usize, step: Step, start: Instant) {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        let at = self.out.begin();
        match step {
            Step::Get => {
                self.out.int(xid).int(OP_GET_DATA).bytes(&self.key).boolean(false);
            }
            Step::Set if self.spread > 0 => {
                self.draw ^= self.draw << 13;
                self.draw ^= self.draw >> 7;
                self.draw ^= self.draw << 17;
                let path = format!("/fill/n{:09}", self.draw % self.spread);
                self.out.int(xid).int(OP_SET_DATA).bytes(path.as_bytes()).bytes(&self.value).int(-1);
            }
            Step::Set => {
                self.out.int(xid).int(OP_SET_DATA).bytes(&self.key).bytes(&self.value).int(-1);
            }
            Step::Create => {
                let path = self.own_path(slot);
                self.out.int(xid).int(OP_CREATE).bytes(&path).bytes(&self.value);
                // ACL list: one entry, world:anyone with every permission.
                self.out.int(1).int(31).bytes(b"world").bytes(b"anyone").int(EPHEMERAL);
            }
            Step::Delete => {
                let path = self.own_path(slot);
                self.out.int(xid).int(OP_DELETE).bytes(&path).int(-1);
            }
        }
        self.out.end(at);
        self.in_flight.push_back(Sent { slot, xid, step, start });
    }

    /// The first request of an operation.
    fn first_step(&mut self) -> Step {
        match self.workload {
            Workload::Read => Step::Get,
            Workload::Mixed if self.mix.next_is_read() => Step::Get,
            Workload::CreateDelete => Step::Create,
            _ => Step::Set,
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.0.is_empty() {
            self.stream.write_all(&self.out.0).await?;
            self.out.0.clear();
            // TLS buffers records until flushed (on TCP it does nothing).
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// The closed loop: `depth` requests in flight until `window.stop`; returns the
    /// operations counted and their latencies.
    async fn run(mut self, depth: usize, window: Window) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
        let mut local = histogram()?;
        let mut n = 0u64;
        let now = Instant::now();
        for slot in 0..depth {
            let step = self.first_step();
            self.queue(slot, step, now);
        }
        self.flush().await?;
        let mut stopping = false;
        while !self.in_flight.is_empty() {
            // Straight into the input buffer, after what is left of a partial frame.
            self.input.reserve(64 * 1024);
            let got = self.stream.read_buf(&mut self.input).await?;
            ensure!(got > 0, "the server closed the connection");
            stopping = stopping || window.stop.load(std::sync::atomic::Ordering::Relaxed);
            let mut at = 0;
            while self.input.len() - at >= 4 {
                let len = be_i32(&self.input, at);
                ensure!(len >= 0 && (len as usize) <= MAX_FRAME, "a reply frame of {len} bytes");
                let end = at + 4 + len as usize;
                if self.input.len() < end {
                    break;
                }
                let frame_xid = be_i32(&self.input, at + 4);
                if frame_xid < 0 {
                    // A ping reply or a watch event (none are set): not a request's reply.
                    at = end;
                    continue;
                }
                let Some(sent) = self.in_flight.pop_front() else { bail!("a reply nobody asked for") };
                check(&self.input[at + 4..end], &sent, self.value.len())?;
                at = end;
                let next = match sent.step {
                    Step::Create => Some((Step::Delete, sent.start)),
                    _ => {
                        window.record(&mut local, &mut n, sent.start)?;
                        None
                    }
                };
                if stopping {
                    if let Some((step, start)) = next {
                        // Finish the pair: leave no ephemeral behind.
                        self.queue(sent.slot, step, start);
                    }
                    continue;
                }
                match next {
                    Some((step, start)) => self.queue(sent.slot, step, start),
                    None => {
                        let step = self.first_step();
                        self.queue(sent.slot, step, Instant::now());
                    }
                }
            }
            self.input.drain(..at);
            self.flush().await?;
        }
        self.close().await?;
        Ok((n, local))
    }

    /// closeSession, and its reply, so that a server is not left tracking the session.
    async fn close(&mut self) -> anyhow::Result<()> {
        let xid = self.next_xid;
        let at = self.out.begin();
        self.out.int(xid).int(OP_CLOSE_SESSION);
        self.out.end(at);
        self.flush().await?;
        let mut len = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut len)).await;
        ensure!(matches!(read, Ok(Ok(_))), "no reply to closeSession");
        Ok(())
    }
}

/// A seed from a key (FNV-1a), so that sessions draw different znodes.
fn seed_of(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1
}

/// Checks one reply frame (without its length) against the oldest request in flight.
fn check(frame: &[u8], sent: &Sent, value_len: usize) -> anyhow::Result<()> {
    ensure!(frame.len() >= REPLY_HEADER, "a reply of {} bytes", frame.len());
    let (xid, err) = (be_i32(frame, 0), be_i32(frame, 12));
    ensure!(xid == sent.xid, "reply xid {xid}, expected {} (replies out of order)", sent.xid);
    if err != 0 {
        bail!("{:?} failed with ZooKeeper error {err}", sent.step);
    }
    if sent.step == Step::Get {
        ensure!(frame.len() >= REPLY_HEADER + 4, "a getData reply without data");
        let len = be_i32(frame, REPLY_HEADER);
        ensure!(len as usize == value_len, "getData returned {len} bytes, expected {value_len}");
    }
    Ok(())
}

/// Runs a closed-loop `workload` with the wire driver: `load.clients` sessions with
/// `load.depth` requests in flight each, session `c` on key `{root}/k{c}` (which it creates).
pub async fn run(
    target: &str,
    tls: &Tls,
    workload: Workload,
    load: &Load,
    root: &str,
    window: &Window,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    ensure!(supports(workload), "the wire driver does not run {workload:?}");
    ensure!(load.rate.is_none(), "the wire driver runs closed loops only (drop --rate or use --driver crate)");
    let value = vec![b'v'; load.value_bytes];
    // A connection string may name several servers: sessions go round them.
    let servers: Vec<&str> = target.split(',').filter(|s| !s.is_empty()).collect();
    ensure!(!servers.is_empty(), "no server in {target:?}");
    let mut tasks = Vec::new();
    for c in 0..load.clients {
        let server = servers[c % servers.len()];
        let mut session =
            Session::connect(server, tls, format!("{root}/k{c}"), value.clone(), workload, load.mix(c)).await?;
        session.spread = load.spread;
        let (window, depth) = (window.clone(), load.depth.max(1));
        tasks.push(tokio::spawn(async move {
            let (n, local) = session.run(depth, window.clone()).await?;
            window.add(n, &local)
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: i32, err: i32, data: Option<&[u8]>) -> Vec<u8> {
        let mut out = Out(Vec::new());
        out.int(xid).long(7).int(err);
        if let Some(d) = data {
            out.bytes(d).0.extend_from_slice(&[0; 68]);
        }
        out.0
    }

    #[test]
    fn replies_are_checked_against_what_was_sent() {
        let get = Sent { slot: 0, xid: 5, step: Step::Get, start: Instant::now() };
        assert!(check(&reply(5, 0, Some(&[1; 256])), &get, 256).is_ok());
        // Out of order, an error code, a short value, a truncated header.
        assert!(check(&reply(6, 0, Some(&[1; 256])), &get, 256).is_err());
        assert!(check(&reply(5, -101, None), &get, 256).is_err());
        assert!(check(&reply(5, 0, Some(&[1; 10])), &get, 256).is_err());
        assert!(check(&reply(5, 0, None)[..10], &get, 256).is_err());
        let set = Sent { slot: 0, xid: 9, step: Step::Set, start: Instant::now() };
        assert!(check(&reply(9, 0, None), &set, 256).is_ok());
        assert!(check(&reply(9, -103, None), &set, 256).is_err());
    }

    #[test]
    fn frames_carry_their_length() {
        let mut out = Out(Vec::new());
        let at = out.begin();
        out.int(3).int(OP_GET_DATA).bytes(b"/k").boolean(false);
        out.end(at);
        assert_eq!(be_i32(&out.0, 0) as usize, out.0.len() - 4);
        assert_eq!(&out.0[4..12], &[0, 0, 0, 3, 0, 0, 0, 4]);
    }
}
