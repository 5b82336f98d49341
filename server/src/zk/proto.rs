//! ZooKeeper's client protocol records (zookeeper.jute), opcodes and special xids.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use baton_engine::log::Acl;
use baton_engine::tree::Stat;

use super::jute::{JuteError, Reader, Writer};

/// Opcodes (`ZooDefs.OpCode`).
#[allow(missing_docs)]
pub mod op {
    pub const NOTIFICATION: i32 = 0;
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const RECONFIG: i32 = 16;
    pub const CHECK_WATCHES: i32 = 17;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const DELETE_CONTAINER: i32 = 20;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const SASL: i32 = 102;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
    pub const WHO_AM_I: i32 = 107;
    pub const CREATE_SESSION: i32 = -10;
    pub const CLOSE_SESSION: i32 = -11;
    pub const ERROR: i32 = -1;
}

/// Reserved xids (`ClientCnxn`).
#[allow(missing_docs)]
pub mod xid {
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
    pub const SET_WATCHES: i32 = -8;
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Protocol version (0).
    pub protocol_version: i32,
    /// The last zxid this client saw (it must not connect to a server behind it).
    pub last_zxid_seen: i64,
    /// Requested session timeout.
    pub timeout_ms: i32,
    /// 0 for a new session, else the session to resume.
    pub session_id: i64,
    /// The session password when resuming.
    pub passwd: Vec<u8>,
    /// The client accepts a read-only server (absent in old clients: false).
    pub read_only: bool,
}

impl ConnectRequest {
    /// Decodes the connect frame.
    pub fn decode(bytes: &[u8]) -> Result<ConnectRequest, JuteError> {
        let mut r = Reader::new(bytes);
        let req = ConnectRequest {
            protocol_version: r.int("protocolVersion")?,
            last_zxid_seen: r.long("lastZxidSeen")?,
            timeout_ms: r.int("timeOut")?,
            session_id: r.long("sessionId")?,
            passwd: r.buffer("passwd")?.to_vec(),
            read_only: if r.remaining() > 0 { r.bool("readOnly")? } else { false },
        };
        r.finish()?;
        Ok(req)
    }

    /// Encodes it (for tests and tools).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        w.int(self.protocol_version).long(self.last_zxid_seen).int(self.timeout_ms).long(self.session_id);
        w.buffer(&self.passwd).bool(self.read_only);
        w.into_frame()
    }
}

/// The answer to a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Protocol version (0).
    pub protocol_version: i32,
    /// Negotiated timeout; 0 tells the client its session expired.
    pub timeout_ms: i32,
    /// The session id.
    pub session_id: i64,
    /// The session password.
    pub passwd: Vec<u8>,
    /// Whether this server is read-only.
    pub read_only: bool,
}

impl ConnectResponse {
    /// The response frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::frame();
        w.int(self.protocol_version)
            .int(self.timeout_ms)
            .long(self.session_id)
            .buffer(&self.passwd)
            .bool(self.read_only);
        w.into_frame()
    }

    /// Decodes it (for tests and tools).
    pub fn decode(bytes: &[u8]) -> Result<ConnectResponse, JuteError> {
        let mut r = Reader::new(bytes);
        Ok(ConnectResponse {
            protocol_version: r.int("protocolVersion")?,
            timeout_ms: r.int("timeOut")?,
            session_id: r.long("sessionId")?,
            passwd: r.buffer("passwd")?.to_vec(),
            read_only: if r.remaining() > 0 { r.bool("readOnly")? } else { false },
        })
    }
}

/// A create of any flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// The opcode it came with (create, create2, createContainer, createTTL).
    pub op: i32,
    /// Path (the sequence number not yet appended).
    pub path: String,
    /// Data; `None` for null (length -1), kept apart from empty as ZooKeeper does.
    pub data: Option<Vec<u8>>,
    /// ACL.
    pub acl: Vec<Acl>,
    /// `CreateMode` flags.
    pub flags: i32,
    /// TTL for createTTL, else -1.
    pub ttl_ms: i64,
}

/// One operation of a multi.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum MultiOp {
    Create(CreateRequest),
    Delete { path: String, version: i32 },
    SetData { path: String, data: Option<Vec<u8>>, version: i32 },
    Check { path: String, version: i32 },
}

/// One operation of a multiRead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ReadOp {
    GetChildren { path: String },
    GetData { path: String },
}

/// setWatches / setWatches2: a reconnecting client's watches and the zxid it last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SetWatches {
    pub relative_zxid: i64,
    pub data: Vec<String>,
    pub exist: Vec<String>,
    pub child: Vec<String>,
    pub persistent: Vec<String>,
    pub recursive: Vec<String>,
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    Ping,
    Create(CreateRequest),
    Delete {
        path: String,
        version: i32,
    },
    Exists {
        path: String,
        watch: bool,
    },
    GetData {
        path: String,
        watch: bool,
    },
    SetData {
        path: String,
        data: Option<Vec<u8>>,
        version: i32,
    },
    GetAcl {
        path: String,
    },
    SetAcl {
        path: String,
        acl: Vec<Acl>,
        version: i32,
    },
    GetChildren {
        path: String,
        watch: bool,
    },
    GetChildren2 {
        path: String,
        watch: bool,
    },
    Sync {
        path: String,
    },
    Check {
        path: String,
        version: i32,
    },
    Multi(Vec<MultiOp>),
    MultiRead(Vec<ReadOp>),
    CheckWatches {
        path: String,
        kind: i32,
    },
    RemoveWatches {
        path: String,
        kind: i32,
    },
    GetEphemerals {
        prefix: String,
    },
    GetAllChildrenNumber {
        path: String,
    },
    SetWatches(SetWatches),
    AddWatch {
        path: String,
        mode: i32,
    },
    Auth {
        scheme: String,
        auth: Vec<u8>,
    },
    WhoAmI,
    /// One step of a SASL exchange (`GetSASLRequest`): the client's token.
    Sasl {
        token: Vec<u8>,
    },
    CloseSession,
    /// An opcode Baton does not serve (reconfig, ...): answered with Unimplemented.
    Unsupported(i32),
}

impl Request {
    /// Whether the request changes state and so goes through the log.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Create(_)
                | Request::Delete { .. }
                | Request::SetData { .. }
                | Request::SetAcl { .. }
                | Request::Check { .. }
                | Request::Multi(_)
                | Request::CloseSession
        )
    }
}

fn acl(r: &mut Reader<'_>) -> Result<Acl, JuteError> {
    // Clients send an empty id as null (kazoo does for `auth:`); ZooKeeper reads it as such
    // and lets the ACL check decide, so null becomes "" here and fix-up refuses what is bad.
    let perms = r.int("perms")?;
    let scheme = r.string_opt("scheme")?.unwrap_or("").to_string();
    let id = r.string_opt("id")?.unwrap_or("").to_string();
    Ok(Acl { perms, scheme, id })
}

fn acls(r: &mut Reader<'_>) -> Result<Vec<Acl>, JuteError> {
    r.vector("acl", 12, acl)
}

fn path(r: &mut Reader<'_>) -> Result<String, JuteError> {
    Ok(r.string("path")?.to_string())
}

fn create(op: i32, r: &mut Reader<'_>) -> Result<CreateRequest, JuteError> {
    Ok(CreateRequest {
        op,
        path: path(r)?,
        data: r.buffer_opt("data")?.map(<[u8]>::to_vec),
        acl: acls(r)?,
        flags: r.int("flags")?,
        ttl_ms: if op == op::CREATE_TTL { r.long("ttl")? } else { -1 },
    })
}

/// Decodes the body of a request with opcode `op`. The whole body must be consumed.
pub fn decode_request(op_code: i32, body: &[u8]) -> Result<Request, JuteError> {
    let mut r = Reader::new(body);
    let req = match op_code {
        op::PING => Request::Ping,
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => Request::Create(create(op_code, &mut r)?),
        op::DELETE => Request::Delete { path: path(&mut r)?, version: r.int("version")? },
        op::EXISTS => Request::Exists { path: path(&mut r)?, watch: r.bool("watch")? },
        op::GET_DATA => Request::GetData { path: path(&mut r)?, watch: r.bool("watch")? },
        op::SET_DATA => Request::SetData {
            path: path(&mut r)?,
            data: r.buffer_opt("data")?.map(<[u8]>::to_vec),
            version: r.int("version")?,
        },
        op::GET_ACL => Request::GetAcl { path: path(&mut r)? },
        op::SET_ACL => Request::SetAcl { path: path(&mut r)?, acl: acls(&mut r)?, version: r.int("version")? },
        op::GET_CHILDREN => Request::GetChildren { path: path(&mut r)?, watch: r.bool("watch")? },
        op::GET_CHILDREN2 => Request::GetChildren2 { path: path(&mut r)?, watch: r.bool("watch")? },
        op::SYNC => Request::Sync { path: path(&mut r)? },
        op::CHECK => Request::Check { path: path(&mut r)?, version: r.int("version")? },
        op::MULTI => Request::Multi(multi(&mut r)?),
        op::MULTI_READ => Request::MultiRead(multi_read(&mut r)?),
        op::CHECK_WATCHES => Request::CheckWatches { path: path(&mut r)?, kind: r.int("type")? },
        op::REMOVE_WATCHES => Request::RemoveWatches { path: path(&mut r)?, kind: r.int("type")? },
        op::GET_EPHEMERALS => Request::GetEphemerals { prefix: r.string("prefixPath")?.to_string() },
        op::GET_ALL_CHILDREN_NUMBER => Request::GetAllChildrenNumber { path: path(&mut r)? },
        op::SET_WATCHES | op::SET_WATCHES2 => {
            let relative_zxid = r.long("relativeZxid")?;
            let mut list = |what| -> Result<Vec<String>, JuteError> {
                Ok(r.strings(what)?.into_iter().map(str::to_string).collect())
            };
            let (data, exist, child) = (list("dataWatches")?, list("existWatches")?, list("childWatches")?);
            let (persistent, recursive) = if op_code == op::SET_WATCHES2 {
                (list("persistentWatches")?, list("persistentRecursiveWatches")?)
            } else {
                (Vec::new(), Vec::new())
            };
            Request::SetWatches(SetWatches { relative_zxid, data, exist, child, persistent, recursive })
        }
        op::ADD_WATCH => Request::AddWatch { path: path(&mut r)?, mode: r.int("mode")? },
        op::AUTH => {
            let _type = r.int("type")?;
            Request::Auth { scheme: r.string("scheme")?.to_string(), auth: r.buffer("auth")?.to_vec() }
        }
        op::WHO_AM_I => Request::WhoAmI,
        op::SASL => Request::Sasl { token: r.buffer_opt("token")?.map(<[u8]>::to_vec).unwrap_or_default() },
        op::CLOSE_SESSION => Request::CloseSession,
        other => return Ok(Request::Unsupported(other)),
    };
    r.finish()?;
    Ok(req)
}

/// Bound on operations in one multi, so that a hostile frame cannot make an unbounded list.
pub const MULTI_OPS_MAX: usize = 10_000;

fn multi_header(r: &mut Reader<'_>) -> Result<(i32, bool), JuteError> {
    let op_code = r.int("multi type")?;
    let done = r.bool("multi done")?;
    let _err = r.int("multi err")?;
    Ok((op_code, done))
}

/// Reads `MultiHeader`-prefixed operations until the `done` header, at most
/// [`MULTI_OPS_MAX`]; `op` decodes one operation's body given its type.
fn multi_ops<T>(
    r: &mut Reader<'_>,
    what: &'static str,
    mut op: impl FnMut(i32, &mut Reader<'_>) -> Result<T, JuteError>,
) -> Result<Vec<T>, JuteError> {
    let mut ops = Vec::new();
    loop {
        let (op_code, done) = multi_header(r)?;
        if done {
            return Ok(ops);
        }
        if ops.len() >= MULTI_OPS_MAX {
            return Err(JuteError::BadLength { what, len: ops.len() as i32 });
        }
        ops.push(op(op_code, r)?);
    }
}

fn multi(r: &mut Reader<'_>) -> Result<Vec<MultiOp>, JuteError> {
    multi_ops(r, "multi", |op_code, r| {
        Ok(match op_code {
            op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => MultiOp::Create(create(op_code, r)?),
            op::DELETE => MultiOp::Delete { path: path(r)?, version: r.int("version")? },
            op::SET_DATA => MultiOp::SetData {
                path: path(r)?,
                data: r.buffer_opt("data")?.map(<[u8]>::to_vec),
                version: r.int("version")?,
            },
            op::CHECK => MultiOp::Check { path: path(r)?, version: r.int("version")? },
            _ => return Err(JuteError::BadLength { what: "multi op type", len: op_code }),
        })
    })
}

fn multi_read(r: &mut Reader<'_>) -> Result<Vec<ReadOp>, JuteError> {
    multi_ops(r, "multiRead", |op_code, r| {
        // Both bodies are (path, watch); multiRead sets no watches.
        let p = path(r)?;
        let _watch = r.bool("watch")?;
        Ok(match op_code {
            op::GET_CHILDREN => ReadOp::GetChildren { path: p },
            op::GET_DATA => ReadOp::GetData { path: p },
            _ => return Err(JuteError::BadLength { what: "multiRead op type", len: op_code }),
        })
    })
}

/// Writes a `Stat`.
pub fn write_stat(w: &mut Writer, s: &Stat) {
    w.long(s.czxid).long(s.mzxid).long(s.ctime).long(s.mtime);
    w.int(s.version).int(s.cversion).int(s.aversion).long(s.ephemeral_owner);
    w.int(s.data_length).int(s.num_children).long(s.pzxid);
}

/// Reads a `Stat` (tests and tools).
pub fn read_stat(r: &mut Reader<'_>) -> Result<Stat, JuteError> {
    Ok(Stat {
        czxid: r.long("czxid")?,
        mzxid: r.long("mzxid")?,
        ctime: r.long("ctime")?,
        mtime: r.long("mtime")?,
        version: r.int("version")?,
        cversion: r.int("cversion")?,
        aversion: r.int("aversion")?,
        ephemeral_owner: r.long("ephemeralOwner")?,
        data_length: r.int("dataLength")?,
        num_children: r.int("numChildren")?,
        pzxid: r.long("pzxid")?,
    })
}

fn write_acls(w: &mut Writer, acl: &[Acl]) {
    w.int(acl.len() as i32);
    for a in acl {
        w.int(a.perms).string(&a.scheme).string(&a.id);
    }
}

/// The result of one operation of a multi or multiRead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum OpReply {
    Create { path: String },
    Create2 { path: String, stat: Stat },
    Delete,
    SetData(Stat),
    Check,
    GetChildren(Vec<String>),
    GetData { data: Option<Vec<u8>>, stat: Stat },
    Error(i32),
}

/// A successful reply's body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Response {
    Empty,
    Create {
        path: String,
    },
    Create2 {
        path: String,
        stat: Stat,
    },
    Stat(Stat),
    GetData {
        data: Option<Vec<u8>>,
        stat: Stat,
    },
    GetAcl {
        acl: Vec<Acl>,
        stat: Stat,
    },
    Children(Vec<String>),
    Children2 {
        children: Vec<String>,
        stat: Stat,
    },
    Path(String),
    Count(i32),
    /// ZooKeeper's `ErrorResponse` record: addWatch's reply body (`ErrorResponse(0)`), which
    /// the Java client reads; without it zkCli's `addWatch` loses the connection.
    ErrorResponse(i32),
    Strings(Vec<String>),
    Multi(Vec<OpReply>),
    WhoAmI(Vec<(String, String)>),
    /// `SetSASLResponse`: the server's token (null after a failure).
    Sasl(Option<Vec<u8>>),
}

fn write_op_reply(w: &mut Writer, reply: &OpReply) {
    let (op_code, err) = match reply {
        OpReply::Create { .. } => (op::CREATE, 0),
        OpReply::Create2 { .. } => (op::CREATE2, 0),
        OpReply::Delete => (op::DELETE, 0),
        OpReply::SetData(_) => (op::SET_DATA, 0),
        OpReply::Check => (op::CHECK, 0),
        OpReply::GetChildren(_) => (op::GET_CHILDREN, 0),
        OpReply::GetData { .. } => (op::GET_DATA, 0),
        OpReply::Error(e) => (op::ERROR, *e),
    };
    w.int(op_code).bool(false).int(err);
    match reply {
        OpReply::Create { path } => {
            w.string(path);
        }
        OpReply::Create2 { path, stat } => {
            w.string(path);
            write_stat(w, stat);
        }
        OpReply::SetData(stat) => write_stat(w, stat),
        OpReply::GetChildren(children) => {
            w.strings(children.iter());
        }
        OpReply::GetData { data, stat } => {
            match data {
                Some(data) => w.buffer(data),
                None => w.null(),
            };
            write_stat(w, stat);
        }
        OpReply::Error(e) => {
            w.int(*e);
        }
        OpReply::Delete | OpReply::Check => {}
    }
}

/// Encodes a reply frame: `ReplyHeader(xid, zxid, err)` and, when `err` is 0, the body.
pub fn encode_reply(xid: i32, zxid: i64, err: i32, body: Option<&Response>) -> Vec<u8> {
    let mut w = Writer::frame();
    w.int(xid).long(zxid).int(err);
    if err == 0 {
        if let Some(body) = body {
            write_response(&mut w, body);
        }
    }
    w.into_frame()
}

/// A reply frame whose body follows the header whatever `err` is: ZooKeeper's answer to a
/// failed SASL step carries a null `SetSASLResponse`.
pub fn encode_reply_with_body(xid: i32, zxid: i64, err: i32, body: &Response) -> Vec<u8> {
    let mut w = Writer::frame();
    w.int(xid).long(zxid).int(err);
    write_response(&mut w, body);
    w.into_frame()
}

fn write_response(w: &mut Writer, body: &Response) {
    match body {
        Response::Empty => {}
        Response::Create { path } | Response::Path(path) => {
            w.string(path);
        }
        Response::Create2 { path, stat } => {
            w.string(path);
            write_stat(w, stat);
        }
        Response::Stat(stat) => write_stat(w, stat),
        Response::GetData { data, stat } => {
            match data {
                Some(data) => w.buffer(data),
                None => w.null(),
            };
            write_stat(w, stat);
        }
        Response::GetAcl { acl, stat } => {
            write_acls(w, acl);
            write_stat(w, stat);
        }
        Response::Children(children) | Response::Strings(children) => {
            w.strings(children.iter());
        }
        Response::Children2 { children, stat } => {
            w.strings(children.iter());
            write_stat(w, stat);
        }
        Response::Count(n) | Response::ErrorResponse(n) => {
            w.int(*n);
        }
        Response::Multi(results) => {
            for r in results {
                write_op_reply(w, r);
            }
            w.int(-1).bool(true).int(-1);
        }
        Response::WhoAmI(infos) => {
            w.int(infos.len() as i32);
            for (scheme, user) in infos {
                w.string(scheme).string(user);
            }
        }
        Response::Sasl(token) => {
            match token {
                Some(token) => w.buffer(token),
                None => w.null(),
            };
        }
    }
}

/// Watch event types (`Watcher.Event.EventType`).
#[allow(missing_docs)]
pub mod event {
    pub const NONE: i32 = -1;
    pub const NODE_CREATED: i32 = 1;
    pub const NODE_DELETED: i32 = 2;
    pub const NODE_DATA_CHANGED: i32 = 3;
    pub const NODE_CHILDREN_CHANGED: i32 = 4;
    pub const DATA_WATCH_REMOVED: i32 = 5;
    pub const CHILD_WATCH_REMOVED: i32 = 6;
    pub const PERSISTENT_WATCH_REMOVED: i32 = 7;
    /// `KeeperState.SyncConnected`.
    pub const STATE_SYNC_CONNECTED: i32 = 3;
}

/// A watch notification frame (`xid` -1).
pub fn encode_notification(event_type: i32, path: &str, zxid: i64) -> Vec<u8> {
    let mut w = Writer::frame();
    w.int(xid::NOTIFICATION).long(zxid).int(0);
    w.int(event_type).int(event::STATE_SYNC_CONNECTED).string(path);
    w.into_frame()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests slice buffers they just built
mod tests {
    use super::*;

    fn body(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.into_bytes()
    }

    #[test]
    fn connect_request_with_and_without_read_only_flag() {
        let req = ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 5,
            timeout_ms: 30_000,
            session_id: 0,
            passwd: vec![0; 16],
            read_only: true,
        };
        let frame = req.encode();
        assert_eq!(ConnectRequest::decode(&frame[4..]), Ok(req.clone()));
        let without = &frame[4..frame.len() - 1];
        assert_eq!(ConnectRequest::decode(without).map(|r| r.read_only), Ok(false));
    }

    #[test]
    fn create_requests_of_every_flavour_decode() {
        let b = body(|w| {
            w.string("/a").buffer(b"x").int(1).int(31).string("world").string("anyone").int(2);
        });
        let Ok(Request::Create(c)) = decode_request(op::CREATE, &b) else { panic!() };
        assert_eq!((c.path.as_str(), c.flags, c.ttl_ms, c.acl.len()), ("/a", 2, -1, 1));
        let b = body(|w| {
            w.string("/t").buffer(b"").int(0).int(5).long(1000);
        });
        let Ok(Request::Create(c)) = decode_request(op::CREATE_TTL, &b) else { panic!() };
        assert_eq!((c.flags, c.ttl_ms), (5, 1000));
    }

    #[test]
    fn multi_decodes_until_done_and_rejects_unknown_ops() {
        let b = body(|w| {
            w.int(op::CREATE).bool(false).int(-1).string("/m").buffer(b"").int(0).int(0);
            w.int(op::CHECK).bool(false).int(-1).string("/m").int(3);
            w.int(op::DELETE).bool(false).int(-1).string("/m").int(-1);
            w.int(-1).bool(true).int(-1);
        });
        let Ok(Request::Multi(ops)) = decode_request(op::MULTI, &b) else { panic!() };
        assert_eq!(ops.len(), 3);
        let bad = body(|w| {
            w.int(op::GET_ACL).bool(false).int(-1).string("/m");
        });
        assert!(decode_request(op::MULTI, &bad).is_err());
    }

    #[test]
    fn null_acl_ids_read_as_empty() {
        let b = body(|w| {
            w.string("/a").buffer(b"").int(1).int(31).string("auth").null().int(0);
        });
        let Ok(Request::Create(c)) = decode_request(op::CREATE, &b) else { panic!() };
        assert_eq!((c.acl[0].scheme.as_str(), c.acl[0].id.as_str()), ("auth", ""));
    }

    #[test]
    fn unknown_opcodes_are_reported_not_failed() {
        assert_eq!(decode_request(9999, &[]), Ok(Request::Unsupported(9999)));
        assert_eq!(decode_request(op::RECONFIG, &[]), Ok(Request::Unsupported(op::RECONFIG)));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let b = body(|w| {
            w.string("/a").bool(true).int(7);
        });
        assert_eq!(decode_request(op::EXISTS, &b), Err(JuteError::Trailing(4)));
        assert!(decode_request(op::EXISTS, &b[..3]).is_err());
    }

    #[test]
    fn replies_encode_header_then_body_only_on_success() {
        let frame = encode_reply(7, 0x100, 0, Some(&Response::Path("/a".into())));
        let mut r = Reader::new(&frame[4..]);
        assert_eq!((r.int("xid"), r.long("zxid"), r.int("err")), (Ok(7), Ok(0x100), Ok(0)));
        assert_eq!(r.string("path"), Ok("/a"));
        let frame = encode_reply(7, 0x100, -101, Some(&Response::Path("/a".into())));
        assert_eq!(frame.len(), 4 + 16);
    }

    #[test]
    fn stat_round_trips() {
        let s = Stat {
            czxid: 1,
            mzxid: 2,
            ctime: 3,
            mtime: 4,
            version: 5,
            cversion: 6,
            aversion: 7,
            ephemeral_owner: 8,
            data_length: 9,
            num_children: 10,
            pzxid: 11,
        };
        let mut w = Writer::new();
        write_stat(&mut w, &s);
        let bytes = w.into_bytes();
        assert_eq!(bytes.len(), 68);
        assert_eq!(read_stat(&mut Reader::new(&bytes)), Ok(s));
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics_the_decoder(op_code in -12i32..110, bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_request(op_code, &bytes);
            let _ = ConnectRequest::decode(&bytes);
        }
    }
}
