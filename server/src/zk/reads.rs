//! Answers to requests that do not change state: reads (which may set watches), pings,
//! sync, auth, watch management and whoAmI.

use std::rc::Rc;

use base64::Engine as _;
use baton_engine::sequencer::{check_acl, perms, AuthId};
use baton_engine::tree::path::validate_path;
use baton_engine::tree::{DataTree, ErrorCode, Stat};
use sha1::{Digest, Sha1};

use super::conn::Conn;
use super::proto::{
    encode_reply, encode_reply_with_body, event, xid as special, OpReply, ReadOp, Request, Response, SetWatches,
};
use super::sasl::SaslStep;
use super::watch::{WatchKind, WatchManager};
use crate::runtime::rate_limit::RateLimit;

/// The watches of a shard, as a read may add to them.
pub struct Watches<'a> {
    /// The shard's registrations.
    pub manager: &'a mut WatchManager,
    /// Most watches one connection may hold.
    pub max_per_connection: usize,
    /// The super user's digest id (`--super-digest`), if one is configured: authenticating
    /// as it passes every ACL check.
    pub super_digest: Option<&'a str>,
    /// SASL DIGEST-MD5 users, `NAME:PASSWORD` (`--sasl-user`).
    pub sasl_users: &'a [String],
}

/// The reply frame for a read-side request, registering any watch it sets.
pub fn answer(watches: &mut Watches<'_>, tree: &DataTree, conn: &Rc<Conn>, xid: i32, request: Request) -> Vec<u8> {
    if let Request::Sasl { token } = request {
        return sasl(watches.sasl_users, conn, xid, &token);
    }
    let zxid = tree.last_zxid().0 as i64;
    let answered = respond(watches, tree, conn, request);
    match answered {
        Ok(Some(body)) => encode_reply(xid, zxid, 0, Some(&body)),
        Ok(None) => encode_reply(xid, zxid, 0, None),
        Err(code) => encode_reply(xid, zxid, code.code(), None),
    }
}

thread_local! {
    /// One log line a second per shard for refused SASL logins.
    static SASL_REFUSALS: RateLimit = const { RateLimit::new(std::time::Duration::from_secs(1)) };
}

/// One SASL step (`ZooKeeperServer.processSasl`): the reply carries zxid 0; once the exchange
/// completes the connection holds `sasl:NAME`; a refused login is answered AuthFailed with a
/// null token and the connection closes (the session lives until it expires), as ZooKeeper.
fn sasl(users: &[String], conn: &Rc<Conn>, xid: i32, token: &[u8]) -> Vec<u8> {
    let password = |name: &str| {
        users.iter().find_map(|u| u.split_once(':').filter(|(n, _)| *n == name).map(|(_, p)| p.to_string()))
    };
    let step = super::sasl::step(&mut conn.sasl.borrow_mut(), token, password, !users.is_empty());
    match step {
        Ok(SaslStep::Continue(token)) => encode_reply(xid, 0, 0, Some(&Response::Sasl(Some(token)))),
        Ok(SaslStep::Authenticated { user, token }) => {
            tracing::info!(peer = %conn.peer, session = %conn.session(), user, "SASL DIGEST-MD5 login");
            let id = AuthId::new("sasl", &user);
            let mut ids = conn.auth.borrow_mut();
            if !ids.contains(&id) {
                ids.push(id);
            }
            encode_reply(xid, 0, 0, Some(&Response::Sasl(Some(token))))
        }
        Err(error) => {
            SASL_REFUSALS.with(|limit| {
                if let Some(suppressed) = limit.allow(std::time::Instant::now()) {
                    tracing::warn!(peer = %conn.peer, %error, suppressed, "Client failed to SASL authenticate; closing the connection");
                }
            });
            conn.close_after_reply();
            encode_reply_with_body(xid, 0, ErrorCode::AuthFailed.code(), &Response::Sasl(None))
        }
    }
}

/// ZooKeeper's digest id for `user:password`: `user:base64(sha1(user:password))`. Without a
/// colon the whole string is the user (`DigestAuthenticationProvider.generateDigest` splits
/// in at most two and never checks: `foo` authenticates as `foo:base64(sha1(foo))`).
pub fn digest_id(credentials: &str) -> String {
    let user = credentials.split_once(':').map_or(credentials, |(user, _)| user);
    let hash = Sha1::digest(credentials.as_bytes());
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

/// A read names a znode by its exact path: ZooKeeper looks the string up and finds nothing
/// for a malformed one (NoNode), where a write would say BadArguments.
fn valid(path: &str) -> Result<(), ErrorCode> {
    validate_path(path, false).map_err(|_| ErrorCode::NoNode)
}

fn readable(tree: &DataTree, conn: &Conn, path: &str, perm: i32) -> Result<Stat, ErrorCode> {
    valid(path)?;
    let znode = tree.get(path).ok_or(ErrorCode::NoNode)?;
    check_acl(znode.acl(), perm, &conn.auth.borrow())?;
    Ok(znode.full_stat())
}

fn watch_room(watches: &Watches<'_>, conn: &Conn) -> bool {
    watches.manager.count_for(conn.id) < watches.max_per_connection
}

fn children(tree: &DataTree, path: &str) -> Vec<String> {
    tree.get(path).map(|n| n.children().map(str::to_string).collect()).unwrap_or_default()
}

fn respond(
    watches: &mut Watches<'_>,
    tree: &DataTree,
    conn: &Rc<Conn>,
    request: Request,
) -> Result<Option<Response>, ErrorCode> {
    Ok(Some(match request {
        Request::Ping | Request::Sync { .. } | Request::Auth { .. } | Request::SetWatches(_) => {
            return session_request(watches, tree, conn, request);
        }
        Request::Exists { path, watch } => {
            // A malformed path exists nowhere; the watch is set on it all the same, as ZooKeeper
            // (which refuses a NUL in an exists path alone, BadArguments).
            if path.contains('\0') {
                return Err(ErrorCode::BadArguments);
            }
            let stat = valid(&path).ok().and_then(|()| tree.stat(&path));
            if watch && watch_room(watches, conn) {
                // An exists watch on a missing node fires when it is created.
                watches.manager.add(WatchKind::Data, &path, conn.id);
            }
            Response::Stat(stat.ok_or(ErrorCode::NoNode)?)
        }
        Request::GetData { path, watch } => {
            let stat = readable(tree, conn, &path, perms::READ)?;
            if watch && watch_room(watches, conn) {
                watches.manager.add(WatchKind::Data, &path, conn.id);
            }
            let data = tree.get(&path).and_then(|n| n.data_opt().map(<[u8]>::to_vec));
            Response::GetData { data, stat }
        }
        Request::GetChildren { path, watch } => {
            readable(tree, conn, &path, perms::READ)?;
            if watch && watch_room(watches, conn) {
                watches.manager.add(WatchKind::Child, &path, conn.id);
            }
            Response::Children(children(tree, &path))
        }
        Request::GetChildren2 { path, watch } => {
            let stat = readable(tree, conn, &path, perms::READ)?;
            if watch && watch_room(watches, conn) {
                watches.manager.add(WatchKind::Child, &path, conn.id);
            }
            Response::Children2 { children: children(tree, &path), stat }
        }
        Request::GetAcl { path } => {
            let stat = readable(tree, conn, &path, perms::READ | perms::ADMIN)?;
            let mut acl = tree.get(&path).map(|n| n.acl().to_vec()).unwrap_or_default();
            if check_acl(&acl, perms::ADMIN, &conn.auth.borrow()).is_err() {
                // Without ADMIN, ZooKeeper hides digest hashes: `user:hash` reads `user:x`.
                for a in acl.iter_mut().filter(|a| a.scheme == "digest") {
                    if let Some((user, _)) = a.id.split_once(':') {
                        a.id = format!("{user}:x");
                    }
                }
            }
            Response::GetAcl { acl, stat }
        }
        Request::GetAllChildrenNumber { path } => {
            readable(tree, conn, &path, perms::READ)?;
            Response::Count(tree.descendant_count(&path).unwrap_or(0).min(i32::MAX as usize) as i32)
        }
        Request::GetEphemerals { prefix } => {
            let session = conn.session();
            let list = tree.ephemerals_of(session).into_iter().filter(|p| p.starts_with(prefix.as_str())).collect();
            Response::Strings(list)
        }
        Request::MultiRead(ops) => Response::Multi(ops.into_iter().map(|op| read_op(tree, conn, op)).collect()),
        Request::AddWatch { path, mode } => {
            // ZooKeeper checks no path, existence or ACL here (the client validated the
            // path); an unknown mode fails to convert: MarshallingError.
            let kind = match mode {
                0 => WatchKind::Persistent,
                1 => WatchKind::Recursive,
                _ => return Err(ErrorCode::MarshallingError),
            };
            if watch_room(watches, conn) {
                watches.manager.add(kind, &path, conn.id);
            }
            Response::ErrorResponse(0)
        }
        Request::CheckWatches { path, kind } => return watch_management(watches, conn, &path, kind, false),
        Request::RemoveWatches { path, kind } => return watch_management(watches, conn, &path, kind, true),
        Request::WhoAmI => {
            let infos = conn.auth.borrow().iter().map(|a| (a.scheme.clone(), a.id.clone())).collect();
            Response::WhoAmI(infos)
        }
        // ZooKeeper 3.8 with reconfigEnabled=false (its default; Baton has no dynamic
        // membership yet) refuses reconfig with ReconfigDisabled.
        Request::Unsupported(super::proto::op::RECONFIG) => return Err(ErrorCode::ReconfigDisabled),
        Request::Unsupported(_) => return Err(ErrorCode::Unimplemented),
        _ => return Err(ErrorCode::Unimplemented),
    }))
}

fn session_request(
    watches: &mut Watches<'_>,
    tree: &DataTree,
    conn: &Rc<Conn>,
    request: Request,
) -> Result<Option<Response>, ErrorCode> {
    match request {
        Request::Ping => Ok(None),
        // Shards send syncs to the write path (see `Shard::request`); never answered here.
        Request::Sync { path } => Ok(Some(Response::Path(path))),
        Request::Auth { scheme, auth } => {
            // ZooKeeper knows `digest`, and `ip`, which grants the connection's own address
            // whatever was sent (held from the start here); anything else is answered
            // AuthFailed and the connection closed — the client sees AUTH_FAILED at once, and
            // the session lives until it expires.
            if scheme == "ip" {
                return Ok(None);
            }
            let credentials = (scheme == "digest").then(|| String::from_utf8(auth).ok()).flatten();
            let Some(credentials) = credentials else {
                conn.close_after_reply();
                return Err(ErrorCode::AuthFailed);
            };
            let id = digest_id(&credentials);
            let mut ids = conn.auth.borrow_mut();
            let mut grant = vec![AuthId::new("digest", &id)];
            if watches.super_digest == Some(id.as_str()) {
                // ZooKeeper's DigestAuthenticationProvider adds `super:` beside the digest id.
                grant.push(AuthId::new("super", ""));
            }
            for new in grant {
                if !ids.contains(&new) {
                    ids.push(new);
                }
            }
            Ok(None)
        }
        Request::SetWatches(set) => {
            set_watches(watches, tree, conn, set);
            Ok(None)
        }
        _ => Err(ErrorCode::Unimplemented),
    }
}

fn read_op(tree: &DataTree, conn: &Rc<Conn>, op: ReadOp) -> OpReply {
    match op {
        ReadOp::GetChildren { path } => match readable(tree, conn, &path, perms::READ) {
            Ok(_) => OpReply::GetChildren(children(tree, &path)),
            Err(e) => OpReply::Error(e.code()),
        },
        ReadOp::GetData { path } => match readable(tree, conn, &path, perms::READ) {
            Ok(stat) => OpReply::GetData { data: tree.get(&path).and_then(|n| n.data_opt().map(<[u8]>::to_vec)), stat },
            Err(e) => OpReply::Error(e.code()),
        },
    }
}

/// checkWatches / removeWatches: `kind` 1 children, 2 data, 3 any, 4 persistent,
/// 5 persistent recursive (ZooKeeper's `WatcherType`; 4 and 5 are 3.9's). ZooKeeper 3.8 keeps
/// a persistent watch in its data and child tables and a recursive one in its data table, so
/// Data removes both and Children a persistent one; the path is looked up as given.
fn watch_management(
    watches: &mut Watches<'_>,
    conn: &Rc<Conn>,
    path: &str,
    kind: i32,
    remove: bool,
) -> Result<Option<Response>, ErrorCode> {
    let kinds: &[WatchKind] = match kind {
        1 => &[WatchKind::Child, WatchKind::Persistent],
        2 => &[WatchKind::Data, WatchKind::Persistent, WatchKind::Recursive],
        3 => &[WatchKind::Child, WatchKind::Data, WatchKind::Persistent, WatchKind::Recursive],
        4 => &[WatchKind::Persistent],
        5 => &[WatchKind::Recursive],
        _ => return Err(ErrorCode::BadArguments),
    };
    let mut found = false;
    for &k in kinds {
        found |= if remove { watches.manager.remove(k, path, conn.id) } else { watches.manager.has(k, path, conn.id) };
    }
    if found {
        Ok(Some(Response::Empty))
    } else {
        Err(ErrorCode::NoWatcher)
    }
}

/// Re-registers a reconnecting client's watches, firing at once those whose condition has
/// already happened since `relative_zxid` (ZooKeeper's `DataTree.setWatches`).
fn set_watches(watches: &mut Watches<'_>, tree: &DataTree, conn: &Rc<Conn>, set: SetWatches) {
    let SetWatches { relative_zxid, data, exist, child, persistent, recursive } = set;
    let zxid = tree.last_zxid().0 as i64;
    let fire = |event_type: i32, path: &str| conn.send(super::proto::encode_notification(event_type, path, zxid));
    for path in data {
        match tree.stat(&path) {
            None => fire(event::NODE_DELETED, &path),
            Some(s) if s.mzxid > relative_zxid => fire(event::NODE_DATA_CHANGED, &path),
            Some(_) => watches.manager.add(WatchKind::Data, &path, conn.id),
        }
    }
    for path in exist {
        match tree.stat(&path) {
            Some(_) => fire(event::NODE_CREATED, &path),
            None => watches.manager.add(WatchKind::Data, &path, conn.id),
        }
    }
    for path in child {
        match tree.stat(&path) {
            None => fire(event::NODE_DELETED, &path),
            Some(s) if s.pzxid > relative_zxid => fire(event::NODE_CHILDREN_CHANGED, &path),
            Some(_) => watches.manager.add(WatchKind::Child, &path, conn.id),
        }
    }
    for path in persistent {
        watches.manager.add(WatchKind::Persistent, &path, conn.id);
    }
    for path in recursive {
        watches.manager.add(WatchKind::Recursive, &path, conn.id);
    }
}

/// The xid a reply carries. ZooKeeper hard-codes only the ping's (-2); every other reply,
/// auth and setWatches included, echoes the request's xid (clients normally send -4 and -8
/// for those, but some number them like any request).
pub fn reply_xid(request: &Request, xid: i32) -> i32 {
    match request {
        Request::Ping => special::PING,
        _ => xid,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_ids_match_zookeeper() {
        // `DigestAuthenticationProvider.generateDigest("super:test")` in ZooKeeper's docs.
        assert_eq!(super::digest_id("super:test"), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
        // No colon: the whole string is the user, as ZooKeeper's generateDigest does.
        assert_eq!(super::digest_id("foo"), "foo:C+7Hteo/D9vJXQ3UfzxbwnXaijM=");
    }
}
