//! A minimal ZooKeeper client over a blocking socket, built from the server's own codec, for
//! tests that need exact control of the bytes (sessions left to expire, hostile frames).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use baton_server::zk::jute::{Reader, Writer};
use baton_server::zk::proto::{op, ConnectRequest, ConnectResponse};

/// A reply: header fields and the body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Echoed xid.
    pub xid: i32,
    /// Server zxid.
    pub zxid: i64,
    /// Error code (0 = ok).
    pub err: i32,
    /// Body.
    pub body: Vec<u8>,
}

/// Watch notifications as (event type, path), in arrival order.
pub type Events = Vec<(i32, String)>;

/// One raw connection.
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    xid: i32,
    /// Session id granted.
    pub session_id: i64,
    /// Session password.
    pub passwd: Vec<u8>,
}

/// Reads one length-prefixed frame; `None` when the server closed the connection.
pub fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).ok()?;
    let len = i32::from_be_bytes(head);
    let mut body = vec![0u8; usize::try_from(len).ok()?];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
pub fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(wait));
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a reply or notification before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

impl RawClient {
    /// Connects and opens (or resumes) a session.
    pub fn connect(addr: SocketAddr, timeout_ms: i32, session: Option<(i64, Vec<u8>)>) -> Option<RawClient> {
        let session = session.unwrap_or((0, vec![0; 16]));
        RawClient::open(addr, timeout_ms, session, Duration::from_secs(5), Duration::from_secs(10)).ok()
    }

    /// Resumes session `session` on `addr`: `Err(true)` when the server says the session
    /// expired, `Err(false)` when it could not be reached or closed the connection.
    pub fn resume(addr: SocketAddr, timeout_ms: i32, session: (i64, Vec<u8>)) -> Result<RawClient, bool> {
        RawClient::open(addr, timeout_ms, session, Duration::from_secs(2), Duration::from_secs(4))
    }

    /// The connect handshake; `Err(true)` when the server refused the session as expired.
    fn open(
        addr: SocketAddr,
        timeout_ms: i32,
        (session_id, passwd): (i64, Vec<u8>),
        connect_wait: Duration,
        read_wait: Duration,
    ) -> Result<RawClient, bool> {
        let mut stream = TcpStream::connect_timeout(&addr, connect_wait).map_err(|_| false)?;
        stream.set_read_timeout(Some(read_wait)).map_err(|_| false)?;
        let req =
            ConnectRequest { protocol_version: 0, last_zxid_seen: 0, timeout_ms, session_id, passwd, read_only: false };
        stream.write_all(&req.encode()).map_err(|_| false)?;
        let resp = ConnectResponse::decode(&read_frame(&mut stream).ok_or(false)?).map_err(|_| false)?;
        if resp.timeout_ms <= 0 {
            return Err(true);
        }
        Ok(RawClient { stream, xid: 0, session_id: resp.session_id, passwd: resp.passwd })
    }

    /// Sends a request and waits for its reply (skipping watch notifications).
    pub fn call(&mut self, op_code: i32, body: &[u8]) -> Option<Reply> {
        self.call_noting(op_code, body).map(|(_, reply)| reply)
    }

    /// Sends a request and waits for its reply; also returns the watch notifications that
    /// arrived before it, as (event type, path), in order.
    pub fn call_noting(&mut self, op_code: i32, body: &[u8]) -> Option<(Events, Reply)> {
        let mut events = Vec::new();
        self.xid += 1;
        let mut w = Writer::frame();
        w.int(self.xid).int(op_code);
        let mut frame = w.into_bytes();
        frame.extend_from_slice(body);
        let len = (frame.len() - 4) as u32;
        frame[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame).ok()?;
        loop {
            let raw = read_frame(&mut self.stream)?;
            let mut r = Reader::new(&raw);
            let (xid, zxid, err) = (r.int("xid").ok()?, r.long("zxid").ok()?, r.int("err").ok()?);
            if xid == -1 {
                // WatcherEvent: type, state, path.
                let (kind, _state, path) = (r.int("type").ok()?, r.int("state").ok()?, r.string("path").ok()?);
                events.push((kind, path.to_string()));
                continue;
            }
            return Some((events, Reply { xid, zxid, err, body: raw[16..].to_vec() }));
        }
    }

    /// create(path, data) with an open ACL and `flags`.
    pub fn create(&mut self, path: &str, data: &[u8], flags: i32) -> Option<Reply> {
        let mut w = Writer::new();
        w.string(path).buffer(data).int(1).int(31).string("world").string("anyone").int(flags);
        self.call(op::CREATE, &w.into_bytes())
    }

    /// getData(path, watch): the data and the notifications that arrived before the reply.
    pub fn get_data(&mut self, path: &str, watch: bool) -> Option<(Events, Vec<u8>)> {
        let mut w = Writer::new();
        w.string(path).bool(watch);
        let (events, reply) = self.call_noting(op::GET_DATA, &w.into_bytes())?;
        if reply.err != 0 {
            return None;
        }
        let data = Reader::new(&reply.body).buffer("data").ok()?.to_vec();
        Some((events, data))
    }

    /// setData(path, data, version -1): the reply and the notifications that arrived before it.
    pub fn set_data(&mut self, path: &str, data: &[u8]) -> Option<(Events, Reply)> {
        let mut w = Writer::new();
        w.string(path).buffer(data).int(-1);
        self.call_noting(op::SET_DATA, &w.into_bytes())
    }

    /// getData(path) without a watch: the data and the Stat's version, or the error code.
    pub fn get_versioned(&mut self, path: &str) -> Option<Result<(Vec<u8>, i32), i32>> {
        let mut w = Writer::new();
        w.string(path).bool(false);
        let reply = self.call(op::GET_DATA, &w.into_bytes())?;
        if reply.err != 0 {
            return Some(Err(reply.err));
        }
        let mut r = Reader::new(&reply.body);
        let data = r.buffer("data").ok()?.to_vec();
        // Stat: czxid, mzxid, ctime, mtime (8 bytes each), then version.
        for field in ["czxid", "mzxid", "ctime", "mtime"] {
            r.long(field).ok()?;
        }
        let version = r.int("version").ok()?;
        Some(Ok((data, version)))
    }

    /// setData(path, data, version): the reply (BadVersion, -103, when the version moved on).
    pub fn set_data_at(&mut self, path: &str, data: &[u8], version: i32) -> Option<Reply> {
        let mut w = Writer::new();
        w.string(path).buffer(data).int(version);
        self.call(op::SET_DATA, &w.into_bytes())
    }

    /// exists(path) without a watch.
    pub fn exists(&mut self, path: &str) -> Option<Reply> {
        let mut w = Writer::new();
        w.string(path).bool(false);
        self.call(op::EXISTS, &w.into_bytes())
    }

    /// getChildren(path) without a watch: the names, or `None` on an error or a lost
    /// connection.
    pub fn children(&mut self, path: &str) -> Option<Vec<String>> {
        let mut w = Writer::new();
        w.string(path).bool(false);
        let reply = self.call(op::GET_CHILDREN, &w.into_bytes())?;
        if reply.err != 0 {
            return None;
        }
        let mut r = Reader::new(&reply.body);
        let n = r.int("count").ok()?;
        (0..n).map(|_| r.string("child").ok().map(str::to_string)).collect()
    }

    /// getData(path)'s whole reply body (data and Stat), or `None` on an error.
    pub fn data_and_stat(&mut self, path: &str) -> Option<Vec<u8>> {
        let mut w = Writer::new();
        w.string(path).bool(false);
        let reply = self.call(op::GET_DATA, &w.into_bytes())?;
        (reply.err == 0).then_some(reply.body)
    }

    /// sync(path): the reply's error code.
    pub fn sync(&mut self, path: &str) -> Option<i32> {
        let mut w = Writer::new();
        w.string(path);
        self.call(op::SYNC, &w.into_bytes()).map(|r| r.err)
    }
}

/// Sends a four-letter word and returns the whole answer ("" when the server is down).
pub fn four_letter(addr: SocketAddr, word: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(word).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
