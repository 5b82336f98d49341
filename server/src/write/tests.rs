//! The write path's decisions, one input at a time, with the exact effects asserted:
//! connect admission and session resume, refusal ordering, session expiry, forwarding, and
//! what a role change does to serving.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use baton_engine::mvcc::KeySpace;
use baton_engine::sequencer::{CreateMode, CreateOp, Rejected, SequencerConfig, WriteOp, WriteRequest};
use baton_engine::tree::{open_acl, DataTree, ErrorCode, OpResult};
use baton_engine::zab::{LogEntry, Role};
use baton_engine::{SessionId, Zxid};

use super::forward::Forwarded;
use super::path::{Effect, Now, WritePath, WritePathConfig};
use super::session::password;
use crate::runtime::{ClientRef, ConnId, SessionRequest, ToClient, ToWritePath, WriteOutcome};

/// The time `ms` after the start of a test.
fn at(ms: u64) -> Now {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    Now { instant: start + Duration::from_millis(ms), wall_ms: 1_700_000_000_000 + ms as i64 }
}

fn config() -> WritePathConfig {
    WritePathConfig {
        id: 1,
        shards: 2,
        session_timeout_ms: (4_000, 40_000),
        sequencer: SequencerConfig::default(),
        read_only_after: None,
    }
}

const A: ClientRef = ClientRef { shard: 0, conn: ConnId(7) };
const B: ClientRef = ClientRef { shard: 1, conn: ConnId(9) };

/// A write path leading epoch 1 over `tree`, its role-change effects taken.
fn leader(tree: &DataTree) -> WritePath {
    let mut path = WritePath::new(config(), at(0));
    path.role_changed(tree, at(0), Role::Leading { epoch: 1, established: true }, tree.last_zxid());
    path.take_effects();
    path
}

/// A follower of server 2 in epoch 1, serving.
fn follower(tree: &DataTree) -> WritePath {
    let mut path = WritePath::new(config(), at(0));
    path.role_changed(tree, at(0), Role::Following { leader: 2, epoch: 1, serving: true }, tree.last_zxid());
    path.take_effects();
    path
}

fn create(session: i64, cxid: i32, path: &str) -> WriteRequest {
    let op = CreateOp {
        path: path.into(),
        data: Some(b"x".to_vec()),
        acl: open_acl(),
        mode: CreateMode::Persistent,
        ttl_ms: 0,
        container: false,
    };
    WriteRequest { session_id: SessionId(session), cxid, auth: Vec::new(), op: WriteOp::Create(op) }
}

fn write(client: ClientRef, req: WriteRequest) -> ToWritePath {
    ToWritePath::Write { client, xid: req.cxid, req }
}

/// The entries of the proposals among `effects`, at the zxids they were prepared for.
fn proposed(effects: &[Effect]) -> Vec<LogEntry> {
    let mut out = Vec::new();
    for effect in effects {
        if let Effect::Propose { first, payloads } = effect {
            for (k, payload) in payloads.iter().enumerate() {
                out.push(LogEntry::new(Zxid::new(first.epoch(), first.counter() + k as u32), payload.clone()));
            }
        }
    }
    out
}

/// The answers to `shard` in a `Publish` among `effects`.
fn published(effects: &[Effect], shard: usize) -> Vec<ToClient> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { answers, .. } => Some(answers[shard].iter().map(|(_, a)| a.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Opens a session for `client` on a leader and commits it; returns its id.
fn open_session(path: &mut WritePath, tree: &mut DataTree, client: ClientRef, now: Now) -> SessionId {
    let req = SessionRequest {
        session_id: SessionId::NONE,
        password: Vec::new(),
        timeout_ms: 6_000,
        last_zxid_seen: Zxid::ZERO,
        read_only: false,
    };
    path.handle(tree, now, ToWritePath::Connect { client, req });
    path.flush();
    let entries = proposed(&path.take_effects());
    path.apply(tree, &mut KeySpace::new(), now, &entries);
    let effects = path.take_effects();
    match published(&effects, client.shard).as_slice() {
        [ToClient::Connected { session, timeout_ms: 6_000, .. }] => *session,
        other => panic!("expected the session to open, got {other:?}"),
    }
}

#[test]
fn a_server_that_does_not_serve_closes_new_connections() {
    let tree = DataTree::new();
    let mut path = WritePath::new(config(), at(0));
    let req = SessionRequest {
        session_id: SessionId::NONE,
        password: Vec::new(),
        timeout_ms: 6_000,
        last_zxid_seen: Zxid::ZERO,
        read_only: false,
    };
    path.handle(&tree, at(1), ToWritePath::Connect { client: A, req });
    let effects = path.take_effects();
    assert!(
        matches!(effects.as_slice(), [Effect::Client { shard: 0, msg: ToClient::Close { conn: ConnId(7) } }]),
        "{effects:?}"
    );
}

#[test]
fn a_client_ahead_of_this_server_is_sent_elsewhere() {
    let tree = DataTree::new();
    let mut path = leader(&tree);
    let req = SessionRequest {
        session_id: SessionId::NONE,
        password: Vec::new(),
        timeout_ms: 6_000,
        last_zxid_seen: Zxid::new(1, 5),
        read_only: false,
    };
    path.handle(&tree, at(1), ToWritePath::Connect { client: A, req });
    let effects = path.take_effects();
    assert!(
        matches!(effects.as_slice(), [Effect::Client { shard: 0, msg: ToClient::Close { conn: ConnId(7) } }]),
        "{effects:?}"
    );
}

#[test]
fn a_new_session_is_answered_once_its_creation_commits_with_a_timeout_within_bounds() {
    let mut tree = DataTree::new();
    let mut path = leader(&tree);
    let req = SessionRequest {
        session_id: SessionId::NONE,
        password: Vec::new(),
        timeout_ms: 1,
        last_zxid_seen: Zxid::ZERO,
        read_only: false,
    };
    path.handle(&tree, at(1), ToWritePath::Connect { client: A, req });
    assert!(path.take_effects().is_empty(), "nothing until proposed");
    path.flush();
    let effects = path.take_effects();
    let entries = proposed(&effects);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].zxid, Zxid::new(1, 1));
    path.apply(&mut tree, &mut KeySpace::new(), at(2), &entries);
    let effects = path.take_effects();
    match published(&effects, 0).as_slice() {
        [ToClient::Connected { conn: ConnId(7), session, timeout_ms: 4_000, password: p, .. }] => {
            assert_eq!(*p, password(*session));
            assert!(tree.sessions().contains_key(session));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_session_resumes_with_its_password_and_moves_from_its_old_connection() {
    let mut tree = DataTree::new();
    let mut path = leader(&tree);
    let session = open_session(&mut path, &mut tree, A, at(1));
    // A wrong password: expired at once.
    let req = SessionRequest {
        session_id: session,
        password: vec![0; 16],
        timeout_ms: 6_000,
        last_zxid_seen: Zxid::ZERO,
        read_only: false,
    };
    path.handle(&tree, at(2), ToWritePath::Connect { client: B, req });
    let effects = path.take_effects();
    assert!(
        matches!(effects.as_slice(), [Effect::Client { shard: 1, msg: ToClient::SessionExpired { conn: ConnId(9) } }]),
        "{effects:?}"
    );
    // Otherwise the ensemble decides: a sync first (a server cut off with a deposed leader,
    // or behind, must not answer from its own state), then the tree, up to date, tells.
    let resume = |path: &mut WritePath, id: SessionId, at_ms: u64| -> Vec<Effect> {
        let req = SessionRequest {
            session_id: id,
            password: password(id),
            timeout_ms: 6_000,
            last_zxid_seen: Zxid::ZERO,
            read_only: false,
        };
        path.handle(&tree, at(at_ms), ToWritePath::Connect { client: B, req });
        let sync = match path.take_effects().as_slice() {
            [Effect::Sync { id }] => *id,
            other => panic!("a resume asks the ensemble first: {other:?}"),
        };
        path.synced(&tree, at(at_ms), sync, Some(tree.last_zxid()));
        path.take_effects()
    };
    let unknown = SessionId(session.as_i64() + 1);
    let effects = resume(&mut path, unknown, 2);
    assert!(
        matches!(effects.as_slice(), [Effect::Client { shard: 1, msg: ToClient::SessionExpired { conn: ConnId(9) } }]),
        "{effects:?}"
    );
    // The right one: connected (nothing to log), and its old connection closed.
    match resume(&mut path, session, 3).as_slice() {
        [Effect::Client { shard: 0, msg: ToClient::Close { conn: ConnId(7) } }, Effect::Client {
            shard: 1,
            msg: ToClient::Connected { conn: ConnId(9), session: s, timeout_ms: 6_000, .. },
        }] => {
            assert_eq!(*s, session)
        }
        other => panic!("{other:?}"),
    }
    // A sync that fails (the leader lost meanwhile): the client tries again, here or
    // elsewhere; its session is not declared expired.
    let req = SessionRequest {
        session_id: session,
        password: password(session),
        timeout_ms: 6_000,
        last_zxid_seen: Zxid::ZERO,
        read_only: false,
    };
    path.handle(&tree, at(4), ToWritePath::Connect { client: B, req });
    let Some(Effect::Sync { id }) = path.take_effects().pop() else { panic!("a sync") };
    path.synced(&tree, at(4), id, None);
    assert!(matches!(path.take_effects().as_slice(), [Effect::Client { msg: ToClient::Close { .. }, .. }]));
}

/// A leader on which A's create of /x is in flight when B's create of /x is refused
/// (NodeExists against it).
fn contested_create(tree: &DataTree) -> WritePath {
    let mut path = leader(tree);
    path.handle(tree, at(1), write(A, create(0x10, 1, "/x")));
    path.handle(tree, at(1), write(B, create(0x20, 1, "/x")));
    path
}

#[test]
fn a_refusal_that_rests_on_a_write_in_flight_waits_for_it_to_apply() {
    let mut tree = DataTree::new();
    let mut path = contested_create(&tree);
    path.flush();
    let effects = path.take_effects();
    assert_eq!(effects.len(), 1, "only the proposal; the refusal waits: {effects:?}");
    let entries = proposed(&effects);
    assert_eq!(entries.len(), 1);
    // Once /x is applied: the batch (with A's answer) first, then B's refusal, decided at it.
    path.apply(&mut tree, &mut KeySpace::new(), at(2), &entries);
    let effects = path.take_effects();
    match effects.as_slice() {
        [Effect::Publish { batch, answers }, Effect::Client { shard: 1, msg: ToClient::Written { conn: ConnId(9), xid: 1, outcome } }] =>
        {
            assert_eq!(batch.len(), 1);
            assert!(matches!(
                answers[0].as_slice(),
                [(0, ToClient::Written { conn: ConnId(7), xid: 1, outcome: WriteOutcome::Applied { .. } })]
            ));
            assert_eq!(
                *outcome,
                WriteOutcome::Refused { zxid: Zxid::new(1, 1), rejected: Rejected::Op(ErrorCode::NodeExists) }
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refusals_are_answered_in_the_order_they_were_decided() {
    let mut tree = DataTree::new();
    // B's first refusal is deferred behind the write in flight...
    let mut path = contested_create(&tree);
    // ...and a refusal that needs no write in flight waits behind it all the same.
    path.handle(&tree, at(1), write(B, create(0x20, 2, "no-slash")));
    path.flush();
    let entries = proposed(&path.take_effects());
    path.apply(&mut tree, &mut KeySpace::new(), at(2), &entries);
    let xids: Vec<i32> = path
        .take_effects()
        .iter()
        .filter_map(|e| match e {
            Effect::Client { msg: ToClient::Written { xid, outcome: WriteOutcome::Refused { .. }, .. }, .. } => {
                Some(*xid)
            }
            _ => None,
        })
        .collect();
    assert_eq!(xids, vec![1, 2]);
}

#[test]
fn the_leader_expires_a_session_it_has_not_heard_from_through_the_log() {
    let mut tree = DataTree::new();
    let mut path = leader(&tree);
    let session = open_session(&mut path, &mut tree, A, at(0));
    path.tick(&tree, at(5_000));
    assert!(path.take_effects().is_empty(), "within its 6 s");
    // Heard from at 5 s: its deadline moves to 11 s.
    path.handle(&tree, at(5_000), ToWritePath::Touch(vec![session]));
    assert!(path.take_effects().is_empty(), "the leader reports to no one");
    path.tick(&tree, at(10_000));
    assert!(path.take_effects().is_empty());
    path.tick(&tree, at(11_001));
    let effects = path.take_effects();
    let entries = proposed(&effects);
    assert_eq!(entries.len(), 1, "{effects:?}");
    // The close, applied, closes its connection and ends the session everywhere.
    path.apply(&mut tree, &mut KeySpace::new(), at(11_002), &entries);
    let effects = path.take_effects();
    assert_eq!(published(&effects, 0), vec![ToClient::Close { conn: ConnId(7) }]);
    assert!(!tree.sessions().contains_key(&session));
}

#[test]
fn a_follower_forwards_writes_and_reports_liveness_to_its_leader() {
    let mut tree = DataTree::new();
    let mut path = follower(&tree);
    let req = create(0x10, 3, "/x");
    path.handle(&tree, at(1), write(A, req.clone()));
    path.handle(&tree, at(1), ToWritePath::Touch(vec![SessionId(0x10)]));
    let effects = path.take_effects();
    match effects.as_slice() {
        [Effect::Forward { to: 2, data }, Effect::ReportLiveness { sessions }] => {
            assert_eq!(Forwarded::decode(data).expect("decodes"), Forwarded::Write { origin: 1, req });
            assert_eq!(*sessions, vec![SessionId(0x10)]);
        }
        other => panic!("{other:?}"),
    }
    // The leader refused it at a zxid this server has not applied yet: answered once it has.
    let refusal = Forwarded::refusal(SessionId(0x10), 3, Zxid::new(1, 1), Rejected::Op(ErrorCode::NodeExists));
    path.message(&tree, at(2), 2, &refusal.encode());
    assert!(path.take_effects().is_empty());
    let mut leader_tree = DataTree::new();
    let mut leader = leader(&leader_tree);
    leader.handle(&leader_tree, at(2), write(B, create(0x20, 1, "/x")));
    leader.flush();
    let entries = proposed(&leader.take_effects());
    leader.apply(&mut leader_tree, &mut KeySpace::new(), at(3), &entries);
    path.apply(&mut tree, &mut KeySpace::new(), at(3), &entries);
    let effects = path.take_effects();
    assert!(
        matches!(
            effects.as_slice(),
            [
                Effect::Publish { .. },
                Effect::Client {
                    shard: 0,
                    msg: ToClient::Written { conn: ConnId(7), xid: 3, outcome: WriteOutcome::Refused { .. } }
                }
            ]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_leader_refuses_a_forwarded_write_back_to_the_server_it_came_from() {
    let tree = DataTree::new();
    let mut path = leader(&tree);
    let forwarded = Forwarded::Write { origin: 3, req: create(0x30, 4, "bad") };
    path.message(&tree, at(1), 3, &forwarded.encode());
    let effects = path.take_effects();
    match effects.as_slice() {
        [Effect::Forward { to: 3, data }] => {
            let expected = Forwarded::refusal(SessionId(0x30), 4, Zxid::ZERO, Rejected::Op(ErrorCode::BadArguments));
            assert_eq!(Forwarded::decode(data).expect("decodes"), expected);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn losing_the_leader_drops_what_waits_and_disconnects_every_client() {
    let tree = DataTree::new();
    let mut path = follower(&tree);
    path.handle(&tree, at(1), write(A, create(0x10, 1, "/x")));
    path.handle(&tree, at(1), ToWritePath::Sync { client: A, xid: 2 });
    path.take_effects();
    assert!(path.has_pending_writes());
    path.role_changed(&tree, at(2), Role::Looking, Zxid::ZERO);
    let effects = path.take_effects();
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::DisconnectAll, Effect::RoleReported { role: Role::Looking, announce: true }]
        ),
        "{effects:?}"
    );
    assert!(!path.has_pending_writes());
    // A sync answered after the fact finds nothing waiting.
    path.synced(&tree, at(2), 1, Some(Zxid::new(1, 1)));
    assert!(path.take_effects().is_empty());
    // Not serving: writes close their connection.
    path.handle(&tree, at(3), write(A, create(0x10, 3, "/y")));
    assert!(matches!(
        path.take_effects().as_slice(),
        [Effect::Client { msg: ToClient::Close { conn: ConnId(7) }, .. }]
    ));
}

#[test]
fn learning_the_epoch_of_the_same_leader_keeps_serving() {
    let tree = DataTree::new();
    let mut path = WritePath::new(config(), at(0));
    path.role_changed(&tree, at(0), Role::Following { leader: 2, epoch: 0, serving: true }, Zxid::ZERO);
    path.take_effects();
    path.role_changed(&tree, at(1), Role::Following { leader: 2, epoch: 4, serving: true }, Zxid::ZERO);
    let effects = path.take_effects();
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::RoleReported { role: Role::Following { leader: 2, epoch: 4, .. }, announce: true }]
        ),
        "{effects:?}"
    );
    // Another leader (or epoch) is another leadership: clients reconnect.
    path.role_changed(&tree, at(2), Role::Following { leader: 3, epoch: 5, serving: true }, Zxid::ZERO);
    assert!(matches!(path.take_effects().first(), Some(Effect::DisconnectAll)));
}

#[test]
fn an_established_leader_sequences_only_once_its_tree_holds_its_history() {
    let mut tree = DataTree::new();
    let mut path = WritePath::new(config(), at(0));
    // Established with history up to 1:1 logged but not yet applied here.
    let mut earlier = leader(&DataTree::new());
    earlier.handle(&DataTree::new(), at(0), write(A, create(0x10, 1, "/x")));
    earlier.flush();
    let history = proposed(&earlier.take_effects());
    path.role_changed(&tree, at(1), Role::Leading { epoch: 2, established: true }, Zxid::new(1, 1));
    assert!(matches!(path.take_effects().as_slice(), [Effect::RoleReported { .. }]));
    path.handle(&tree, at(1), write(B, create(0x20, 1, "/y")));
    assert!(
        matches!(path.take_effects().as_slice(), [Effect::Client { msg: ToClient::Close { conn: ConnId(9) }, .. }]),
        "not sequencing yet"
    );
    path.apply(&mut tree, &mut KeySpace::new(), at(2), &history);
    path.take_effects();
    path.handle(&tree, at(3), write(B, create(0x20, 2, "/y")));
    path.flush();
    let entries = proposed(&path.take_effects());
    assert_eq!(entries.first().map(|e| e.zxid), Some(Zxid::new(2, 1)), "the new epoch's first zxid");
    path.apply(&mut tree, &mut KeySpace::new(), at(4), &entries);
    match published(&path.take_effects(), 1).as_slice() {
        [ToClient::Written { xid: 2, outcome: WriteOutcome::Applied { results, .. }, .. }] => {
            assert!(matches!(results.as_slice(), [OpResult::Created { .. }]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_committed_entry_that_does_not_decode_stops_the_server() {
    let mut tree = DataTree::new();
    let mut path = follower(&tree);
    path.apply(&mut tree, &mut KeySpace::new(), at(1), &[LogEntry::new(Zxid::new(1, 1), vec![0xff; 40].into())]);
    let effects = path.take_effects();
    assert!(matches!(effects.first(), Some(Effect::Fatal { .. })), "{effects:?}");
}

#[test]
fn a_leader_whose_disk_is_full_refuses_writes_but_opens_sessions_and_takes_writes_again_later() {
    let mut tree = DataTree::new();
    let mut path = leader(&tree);
    path.set_out_of_space(true);
    // Sessions still open: their entries use what is left of the current segment.
    let session = open_session(&mut path, &mut tree, A, at(1));
    path.handle(&tree, at(2), write(A, create(session.0, 1, "/x")));
    path.flush();
    let effects = path.take_effects();
    assert!(proposed(&effects).is_empty(), "nothing goes to the log: {effects:?}");
    match effects.as_slice() {
        [Effect::Client { shard: 0, msg: ToClient::Written { conn: ConnId(7), xid: 1, outcome } }] => assert!(
            matches!(outcome, WriteOutcome::Refused { rejected: Rejected::Op(ErrorCode::NotReadOnly), .. }),
            "{outcome:?}"
        ),
        other => panic!("one refusal, as a read-only ZooKeeper answers: {other:?}"),
    }
    // A write a follower forwards is refused alike, back to that follower.
    let forwarded = Forwarded::Write { origin: 3, req: create(0x30, 4, "/y") };
    path.message(&tree, at(2), 3, &forwarded.encode());
    let effects = path.take_effects();
    assert!(proposed(&effects).is_empty(), "nothing goes to the log: {effects:?}");
    match effects.as_slice() {
        [Effect::Forward { to: 3, data }] => {
            let refusal = Forwarded::decode(data).expect("decodes");
            let expected =
                Forwarded::refusal(SessionId(0x30), 4, tree.last_zxid(), Rejected::Op(ErrorCode::NotReadOnly));
            assert_eq!(refusal, expected);
        }
        other => panic!("the forwarded write is refused back: {other:?}"),
    }
    // Space is back: the same write goes to the log.
    path.set_out_of_space(false);
    path.handle(&tree, at(3), write(A, create(session.0, 2, "/x")));
    path.flush();
    assert_eq!(proposed(&path.take_effects()).len(), 1, "the write is proposed");
}

fn session_request(session_id: SessionId, read_only: bool) -> SessionRequest {
    let password = if session_id == SessionId::NONE { Vec::new() } else { password(session_id) };
    SessionRequest { session_id, password, timeout_ms: 6_000, last_zxid_seen: Zxid::ZERO, read_only }
}

/// What a connect is answered with: `Some(read_only)` for a session, `None` for a close.
fn connect_answer(path: &mut WritePath, tree: &DataTree, now: Now, req: SessionRequest) -> Option<bool> {
    path.handle(tree, now, ToWritePath::Connect { client: A, req });
    match path.take_effects().as_slice() {
        [Effect::Client { msg: ToClient::Connected { read_only, .. }, .. }] => Some(*read_only),
        [Effect::Client { msg: ToClient::Close { .. }, .. }] => None,
        other => panic!("unexpected answer to a connect: {other:?}"),
    }
}

#[test]
fn read_only_mode_grants_read_only_sessions_after_a_while_without_quorum_and_ends_with_it() {
    let mut tree = DataTree::new();
    let config = WritePathConfig { read_only_after: Some(Duration::from_millis(2_000)), ..config() };
    let mut path = WritePath::new(config, at(0));
    // Not yet: a server that just lost its quorum closes every new connection, as without the mode.
    path.tick(&tree, at(1_999));
    assert!(path.take_effects().is_empty());
    assert_eq!(connect_answer(&mut path, &tree, at(1_999), session_request(SessionId::NONE, true)), None);

    path.tick(&tree, at(2_000));
    assert!(matches!(path.take_effects().as_slice(), [Effect::ReadOnly(true)]));
    // A client that asks for read-only gets a new, local session; nothing is proposed.
    assert_eq!(connect_answer(&mut path, &tree, at(2_001), session_request(SessionId::NONE, true)), Some(true));
    // One that does not, or that resumes a session, is closed (it tries another server).
    assert_eq!(connect_answer(&mut path, &tree, at(2_002), session_request(SessionId::NONE, false)), None);
    assert_eq!(connect_answer(&mut path, &tree, at(2_003), session_request(SessionId(0x55), true)), None);
    path.tick(&tree, at(5_000));
    assert!(path.take_effects().is_empty(), "entered once");

    // Looking again while still without quorum keeps the mode.
    path.role_changed(&tree, at(5_001), Role::Looking, tree.last_zxid());
    assert!(!path.take_effects().iter().any(|e| matches!(e, Effect::ReadOnly(_) | Effect::DisconnectAll)));

    // A quorum again: read-only clients are closed and reconnect as read-write ones.
    let leading = Role::Leading { epoch: 2, established: true };
    path.role_changed(&tree, at(6_000), leading, tree.last_zxid());
    let effects = path.take_effects();
    assert!(
        matches!(effects.as_slice(), [Effect::ReadOnly(false), Effect::DisconnectAll, Effect::RoleReported { .. }]),
        "{effects:?}"
    );
    let session = open_session(&mut path, &mut tree, A, at(6_001));
    assert_ne!(session, SessionId::NONE);

    // Losing the quorum again starts the clock again.
    path.role_changed(&tree, at(7_000), Role::Looking, tree.last_zxid());
    path.take_effects();
    path.tick(&tree, at(8_999));
    assert!(!path.take_effects().iter().any(|e| matches!(e, Effect::ReadOnly(_))));
    path.tick(&tree, at(9_000));
    assert!(path.take_effects().iter().any(|e| matches!(e, Effect::ReadOnly(true))));
}

#[test]
fn without_read_only_mode_a_server_without_quorum_never_grants_read_only_sessions() {
    let tree = DataTree::new();
    let mut path = WritePath::new(config(), at(0));
    path.tick(&tree, at(60_000));
    assert!(path.take_effects().is_empty());
    assert_eq!(connect_answer(&mut path, &tree, at(60_001), session_request(SessionId::NONE, true)), None);
}

#[test]
fn read_only_mode_is_for_looking_only_resumes_known_sessions_and_refuses_clients_ahead() {
    let mut tree = DataTree::new();
    let config = WritePathConfig { read_only_after: Some(Duration::from_millis(2_000)), ..config() };
    let mut path = WritePath::new(config, at(0));
    // A session the ensemble created before this server was cut off.
    path.role_changed(&tree, at(0), Role::Leading { epoch: 1, established: true }, tree.last_zxid());
    let known = open_session(&mut path, &mut tree, A, at(1));
    path.role_changed(&tree, at(10), Role::Looking, tree.last_zxid());
    path.take_effects();
    path.tick(&tree, at(2_010));
    assert!(path.take_effects().iter().any(|e| matches!(e, Effect::ReadOnly(true))));
    // It resumes, read-only; an unknown one or a wrong password does not.
    assert_eq!(connect_answer(&mut path, &tree, at(2_011), session_request(known, true)), Some(true));
    assert_eq!(connect_answer(&mut path, &tree, at(2_012), session_request(SessionId(0x77), true)), None);
    let wrong = SessionRequest { password: vec![9; 16], ..session_request(known, true) };
    assert_eq!(connect_answer(&mut path, &tree, at(2_013), wrong), None);
    // A client that saw a newer state than this server's is sent elsewhere.
    let ahead = SessionRequest { last_zxid_seen: Zxid::new(9, 9), ..session_request(SessionId::NONE, true) };
    assert_eq!(connect_answer(&mut path, &tree, at(2_014), ahead), None);

    // Following a leader again, even before it is synchronised, ends the mode at once.
    path.role_changed(&tree, at(3_000), Role::Following { leader: 2, epoch: 2, serving: false }, tree.last_zxid());
    let effects = path.take_effects();
    assert!(matches!(effects.as_slice(), [Effect::ReadOnly(false), Effect::DisconnectAll, ..]), "{effects:?}");
    // And a follower that takes long to synchronise never enters it.
    path.tick(&tree, at(60_000));
    assert!(!path.take_effects().iter().any(|e| matches!(e, Effect::ReadOnly(_))));
    assert_eq!(connect_answer(&mut path, &tree, at(60_001), session_request(SessionId::NONE, true)), None);
}

#[test]
fn etcd_writes_in_the_log_reach_the_keyspace_and_the_tree_counts_their_zxids() {
    use baton_engine::log::{Transaction, Txn};
    use baton_engine::mvcc::{EtcdTxn, PutRequest, RangeRequest};
    let mut tree = DataTree::new();
    let mut etcd = KeySpace::new();
    let mut path = follower(&tree);
    let entries: Vec<LogEntry> = (1..=3u32)
        .map(|i| {
            let put = PutRequest { key: b"k".to_vec(), value: vec![i as u8], ..PutRequest::default() };
            let t = Transaction {
                zxid: Zxid::new(1, i),
                session_id: SessionId(0),
                cxid: 0,
                time_ms: 0,
                txn: Txn::Etcd(EtcdTxn::Put(put)),
            };
            LogEntry::new(t.zxid, t.encode().to_vec().into())
        })
        .collect();
    path.apply(&mut tree, &mut etcd, at(1), &entries);
    assert!(!path.take_effects().iter().any(|e| matches!(e, Effect::Fatal { .. })));
    assert_eq!(tree.last_zxid(), Zxid::new(1, 3));
    assert_eq!(tree.node_count(), DataTree::new().node_count(), "no znode made");
    let kv = etcd.range(&RangeRequest { key: b"k".to_vec(), ..RangeRequest::default() }).expect("a read");
    assert_eq!((kv.revision, kv.kvs[0].version, kv.kvs[0].value.to_vec()), (4, 3, vec![3]));
    // A snapshot of both comes back whole.
    let (back_tree, back_etcd) =
        baton_engine::state::from_image(&baton_engine::state::to_image(&tree, &etcd)).expect("loads");
    assert_eq!(back_tree.last_zxid(), tree.last_zxid());
    assert_eq!(back_etcd.to_image(), etcd.to_image());
}

#[test]
fn an_etcd_lease_expires_on_the_leader_alone_and_a_followers_keep_alives_go_to_it() {
    use baton_engine::log::{ArchivedTxn, Transaction};
    use baton_engine::mvcc::{ArchivedEtcdTxn, EtcdTxn};
    let grant = |path: &mut WritePath, tree: &mut DataTree| {
        let op = WriteOp::Etcd(EtcdTxn::LeaseGrant { id: 9, ttl: 2, min_ttl: 2 });
        let client = ClientRef { shard: 2, conn: ConnId(1) };
        path.handle(
            tree,
            at(0),
            write(client, WriteRequest { session_id: SessionId(1 << 40), cxid: 1, auth: Vec::new(), op }),
        );
        path.flush();
        proposed(&path.take_effects())
    };
    // The leader grants, and with no keep-alive revokes the lease through the log after 2 s.
    let (mut tree, mut etcd) = (DataTree::new(), KeySpace::new());
    let mut path = leader(&tree);
    let entries = grant(&mut path, &mut tree);
    path.apply(&mut tree, &mut etcd, at(1), &entries);
    assert!(etcd.lease(9).is_some());
    path.take_effects();
    path.tick(&tree, at(1_500));
    assert!(proposed(&path.take_effects()).is_empty(), "not yet");
    path.handle(&tree, at(1_500), ToWritePath::KeepAlive(vec![9]));
    path.tick(&tree, at(3_000));
    assert!(proposed(&path.take_effects()).is_empty(), "kept alive at 1.5 s: due at 3.5 s");
    path.tick(&tree, at(3_600));
    let revokes = proposed(&path.take_effects());
    let revoked: Vec<i64> = revokes
        .iter()
        .filter_map(|e| match &Transaction::access(&e.payload).expect("an entry").txn {
            ArchivedTxn::Etcd(ArchivedEtcdTxn::LeaseRevoke { id }) => Some(id.to_native()),
            _ => None,
        })
        .collect();
    assert_eq!(revoked, vec![9]);
    path.apply(&mut tree, &mut etcd, at(3_700), &revokes);
    assert!(etcd.lease(9).is_none());
    path.tick(&tree, at(10_000));
    assert!(proposed(&path.take_effects()).is_empty(), "revoked once");
    // A follower tracks the lease from the log but never expires it; it reports keep-alives.
    let (mut ftree, mut fetcd) = (DataTree::new(), KeySpace::new());
    let mut f = follower(&ftree);
    f.apply(&mut ftree, &mut fetcd, at(1), &entries);
    f.take_effects();
    f.handle(&ftree, at(100), ToWritePath::KeepAlive(vec![9]));
    f.tick(&ftree, at(60_000));
    let effects = f.take_effects();
    assert!(proposed(&effects).is_empty(), "a follower expires nothing");
    let reported = effects.iter().any(|e| {
        matches!(e, Effect::Forward { to: 2, data } if matches!(Forwarded::decode(data), Ok(Forwarded::KeepAlive { leases }) if leases == vec![9]))
    });
    assert!(reported, "{effects:?}");
}
