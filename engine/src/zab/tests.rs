//! Scenario tests of the core: one input, the exact actions out.

use super::*;
use crate::log::{SessionId, Zxid};

fn entry(epoch: u32, counter: u32) -> LogEntry {
    LogEntry::new(Zxid::new(epoch, counter), vec![epoch as u8, counter as u8].into())
}

fn sends(actions: &[Action]) -> Vec<(ServerId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_single_server_leads_at_once_and_commits_what_is_durable() {
    let persisted =
        Persisted { accepted_epoch: 1, current_epoch: 1, snapshot_zxid: Zxid::ZERO, entries: vec![entry(1, 1)] };
    let mut zab = Zab::new(ZabConfig::new(1, vec![1]), persisted);
    let actions = zab.take_actions();
    assert!(actions.contains(&Action::SaveEpochs { accepted: 2, current: 2 }), "{actions:?}");
    assert!(actions.contains(&Action::Commit { through: Zxid::new(1, 1) }), "the recovered log is committed");
    assert_eq!(zab.role(), Role::Leading { epoch: 2, established: true });

    let payload: Payload = vec![9].into();
    assert_eq!(zab.next_zxid(), Ok(Zxid::new(2, 1)), "a new epoch's first zxid");
    let zxids = zab.propose(vec![payload.clone()]).expect("leader");
    assert_eq!(zab.next_zxid(), Ok(Zxid::new(2, 2)));
    assert_eq!(zxids, vec![Zxid::new(2, 1)]);
    assert_eq!(zab.take_actions(), vec![Action::Append { entries: vec![LogEntry::new(Zxid::new(2, 1), payload)] }]);
    zab.on_durable(Zxid::new(2, 1));
    assert_eq!(zab.take_actions(), vec![Action::Commit { through: Zxid::new(2, 1) }]);
}

#[test]
fn a_lone_voter_with_observers_leads_at_once() {
    let mut cfg = ZabConfig::new(1, vec![1]);
    cfg.observers = vec![2, 3];
    let mut zab = Zab::new(cfg, Persisted::default());
    assert_eq!(zab.role(), Role::Leading { epoch: 1, established: true }, "{:?}", zab.take_actions());
}

fn follower_of_2(persisted: Persisted) -> Zab {
    let mut zab = Zab::new(ZabConfig::new(1, vec![1, 2, 3]), persisted);
    zab.take_actions();
    // Servers 2 and 3 report that 2 leads: join it.
    let vote = Vote { epoch: 0, zxid: Zxid::ZERO, leader: 2 };
    zab.on_message(
        3,
        Message::Notification { round: 1, vote, state: Role::Following { leader: 2, epoch: 0, serving: false } },
    );
    zab.on_message(2, Message::Notification { round: 1, vote, state: Role::Leading { epoch: 0, established: false } });
    assert_eq!(zab.role(), Role::Following { leader: 2, epoch: 0, serving: false });
    zab.take_actions();
    zab
}

#[test]
fn a_follower_accepts_a_later_epoch_durably_before_acknowledging_it() {
    let mut zab = follower_of_2(Persisted { accepted_epoch: 3, current_epoch: 3, ..Persisted::default() });
    zab.on_message(2, Message::LeaderInfo { epoch: 4 });
    let actions = zab.take_actions();
    let save = actions.iter().position(|a| *a == Action::SaveEpochs { accepted: 4, current: 3 });
    let ack = Message::AckEpoch { epoch: 4, current_epoch: 3, last_zxid: Zxid::ZERO, fresh: true };
    let sent = actions.iter().position(|a| *a == Action::Send { to: 2, msg: ack.clone() });
    assert!(save.is_some() && sent.is_some() && save < sent, "persist, then ack: {actions:?}");
}

#[test]
fn a_follower_refuses_an_epoch_below_the_one_it_accepted() {
    let mut zab = follower_of_2(Persisted { accepted_epoch: 5, current_epoch: 3, ..Persisted::default() });
    zab.on_message(2, Message::LeaderInfo { epoch: 4 });
    assert_eq!(zab.role(), Role::Looking);
}

#[test]
fn a_follower_acknowledges_newleader_only_once_the_history_is_durable() {
    let mut zab = follower_of_2(Persisted::default());
    zab.on_message(2, Message::LeaderInfo { epoch: 1 });
    zab.take_actions();
    zab.on_message(2, Message::Append { epoch: 1, entries: vec![entry(1, 1), entry(1, 2)] });
    zab.on_message(2, Message::NewLeader { epoch: 1, zxid: Zxid::new(1, 2) });
    let actions = zab.take_actions();
    assert_eq!(actions, vec![Action::Append { entries: vec![entry(1, 1), entry(1, 2)] }], "no ack yet");
    zab.on_durable(Zxid::new(1, 2));
    assert_eq!(
        zab.take_actions(),
        vec![
            Action::SaveEpochs { accepted: 1, current: 1 },
            Action::Send { to: 2, msg: Message::Ack { epoch: 1, zxid: Zxid::new(1, 2) } },
        ]
    );
}

/// A follower of 2 in epoch 1, synchronising, sent the SNAP `chunks` announce at `zxid`.
fn snap_messages(zxid: Zxid, chunks: &[&[u8]]) -> Vec<Message> {
    let whole: Vec<u8> = chunks.concat();
    let mut msgs = vec![Message::Snap { epoch: 1, zxid }];
    msgs.extend(chunks.iter().map(|c| Message::SnapChunk { epoch: 1, data: c.to_vec().into() }));
    let checksum = xxhash_rust::xxh3::xxh3_64(&whole);
    msgs.push(Message::SnapEnd { epoch: 1, bytes: whole.len() as u64, checksum });
    msgs
}

#[test]
fn a_follower_installs_a_snap_chunk_by_chunk_once_it_checks_out() {
    let mut zab = follower_of_2(Persisted::default());
    zab.on_message(2, Message::LeaderInfo { epoch: 1 });
    zab.take_actions();
    let at = Zxid::new(1, 9);
    for msg in snap_messages(at, &[b"abc", b"", b"defg"]) {
        zab.on_message(2, msg);
    }
    assert_eq!(
        zab.take_actions(),
        vec![
            Action::SnapshotBegin { zxid: at },
            Action::SnapshotChunk { data: b"abc".to_vec().into() },
            Action::SnapshotChunk { data: b"".to_vec().into() },
            Action::SnapshotChunk { data: b"defg".to_vec().into() },
            Action::InstallSnapshot { zxid: at },
        ]
    );
    // The log continues after the snapshot.
    zab.on_message(2, Message::Append { epoch: 1, entries: vec![entry(1, 10)] });
    assert_eq!(zab.take_actions(), vec![Action::Append { entries: vec![entry(1, 10)] }]);
}

#[test]
fn a_snap_that_does_not_check_out_or_comes_apart_is_never_installed() {
    let at = Zxid::new(1, 9);
    let whole = snap_messages(at, &[b"abc", b"defg"]);
    let damaged = {
        let mut m = whole.clone();
        m[2] = Message::SnapChunk { epoch: 1, data: b"defh".to_vec().into() };
        m
    };
    let short = {
        let mut m = whole.clone();
        m.remove(2);
        m
    };
    let interleaved = {
        let mut m = whole.clone();
        m.insert(2, Message::Append { epoch: 1, entries: vec![entry(1, 10)] });
        m
    };
    let stray = vec![Message::SnapChunk { epoch: 1, data: b"abc".to_vec().into() }];
    for (what, msgs) in [("damaged", damaged), ("short", short), ("interleaved", interleaved), ("stray", stray)] {
        let mut zab = follower_of_2(Persisted::default());
        zab.on_message(2, Message::LeaderInfo { epoch: 1 });
        zab.take_actions();
        for msg in msgs {
            zab.on_message(2, msg);
        }
        let actions = zab.take_actions();
        assert!(!actions.iter().any(|a| matches!(a, Action::InstallSnapshot { .. })), "{what}: {actions:?}");
        assert_eq!(zab.role(), Role::Looking, "{what}: the follower gives up on its leader");
    }
}

#[test]
fn a_follower_treats_a_gap_in_the_stream_as_a_lost_leader() {
    let mut zab = follower_of_2(Persisted::default());
    zab.on_message(2, Message::LeaderInfo { epoch: 1 });
    zab.on_message(2, Message::Append { epoch: 1, entries: vec![entry(1, 1), entry(1, 3)] });
    assert_eq!(zab.role(), Role::Looking);
}

#[test]
fn a_leader_truncates_a_follower_that_diverged_then_sends_the_difference() {
    // Server 1 leads with history 1:1, 1:2, 2:1. Server 2 has 1:1, 1:2, 1:3 (1:3 was never
    // committed) and must drop 1:3, then receive 2:1.
    let persisted = Persisted {
        accepted_epoch: 2,
        current_epoch: 2,
        snapshot_zxid: Zxid::ZERO,
        entries: vec![entry(1, 1), entry(1, 2), entry(2, 1)],
    };
    let mut zab = Zab::new(ZabConfig::new(1, vec![1, 2, 3]), persisted);
    let own = Vote { epoch: 2, zxid: Zxid::new(2, 1), leader: 1 };
    zab.on_message(2, Message::Notification { round: 1, vote: own, state: Role::Looking });
    zab.on_tick();
    zab.on_tick();
    assert_eq!(zab.role(), Role::Leading { epoch: 0, established: false });
    zab.take_actions();
    zab.on_message(2, Message::FollowerInfo { accepted_epoch: 2, last_zxid: Zxid::new(1, 3) });
    assert_eq!(sends(&zab.take_actions()), vec![(2, Message::LeaderInfo { epoch: 3 })]);
    let ack = Message::AckEpoch { epoch: 3, current_epoch: 1, last_zxid: Zxid::new(1, 3), fresh: true };
    zab.on_message(2, ack);
    assert_eq!(
        sends(&zab.take_actions()),
        vec![
            (2, Message::Trunc { epoch: 3, zxid: Zxid::new(1, 2) }),
            (2, Message::Append { epoch: 3, entries: vec![entry(2, 1)] }),
            (2, Message::NewLeader { epoch: 3, zxid: Zxid::new(2, 1) }),
        ]
    );
    // Its ack of NEWLEADER makes a quorum: the epoch is established and its history committed.
    zab.on_message(2, Message::Ack { epoch: 3, zxid: Zxid::new(2, 1) });
    let actions = zab.take_actions();
    assert!(actions.contains(&Action::Commit { through: Zxid::new(2, 1) }), "{actions:?}");
    assert_eq!(zab.role(), Role::Leading { epoch: 3, established: true });
    assert!(sends(&actions).contains(&(2, Message::UpToDate { epoch: 3, commit: Zxid::new(2, 1) })));
}

#[test]
fn a_leader_commits_only_what_a_quorum_has_durable() {
    let mut zab = Zab::new(ZabConfig::new(1, vec![1, 2, 3]), Persisted::default());
    let own = Vote { epoch: 0, zxid: Zxid::ZERO, leader: 1 };
    zab.on_message(2, Message::Notification { round: 1, vote: own, state: Role::Looking });
    zab.on_tick();
    zab.on_tick();
    zab.on_message(2, Message::FollowerInfo { accepted_epoch: 0, last_zxid: Zxid::ZERO });
    zab.on_message(2, Message::AckEpoch { epoch: 1, current_epoch: 0, last_zxid: Zxid::ZERO, fresh: true });
    zab.on_message(2, Message::Ack { epoch: 1, zxid: Zxid::ZERO });
    assert_eq!(zab.role(), Role::Leading { epoch: 1, established: true });
    zab.take_actions();
    zab.propose(vec![vec![1].into(), vec![2].into()]).expect("established");
    zab.take_actions();
    zab.on_message(2, Message::Ack { epoch: 1, zxid: Zxid::new(1, 2) });
    assert!(zab.take_actions().is_empty(), "the leader's own copy is not durable yet");
    zab.on_durable(Zxid::new(1, 1));
    let actions = zab.take_actions();
    assert_eq!(actions[0], Action::Commit { through: Zxid::new(1, 1) });
    // An ack of an earlier epoch never counts.
    zab.on_message(3, Message::Ack { epoch: 0, zxid: Zxid::new(1, 2) });
    assert!(zab.take_actions().is_empty());
}

#[test]
fn observers_never_make_a_quorum() {
    let cfg = ZabConfig { observers: vec![4, 5], ..ZabConfig::new(1, vec![1, 2, 3]) };
    let mut zab = Zab::new(cfg, Persisted::default());
    let own = Vote { epoch: 0, zxid: Zxid::ZERO, leader: 1 };
    // An observer's vote is ignored; a voter's makes the quorum for the election.
    zab.on_message(4, Message::Notification { round: 1, vote: own, state: Role::Looking });
    zab.on_tick();
    zab.on_tick();
    assert_eq!(zab.role(), Role::Looking, "an observer's vote does not count");
    zab.on_message(2, Message::Notification { round: 1, vote: own, state: Role::Looking });
    zab.on_tick();
    zab.on_tick();
    assert_eq!(zab.role(), Role::Leading { epoch: 0, established: false });
    zab.take_actions();
    // Two observers connecting are not a quorum of voters: no epoch is chosen.
    zab.on_message(4, Message::FollowerInfo { accepted_epoch: 0, last_zxid: Zxid::ZERO });
    zab.on_message(5, Message::FollowerInfo { accepted_epoch: 0, last_zxid: Zxid::ZERO });
    assert!(sends(&zab.take_actions()).is_empty());
    zab.on_message(2, Message::FollowerInfo { accepted_epoch: 0, last_zxid: Zxid::ZERO });
    let sent = sends(&zab.take_actions());
    assert_eq!(sent.len(), 3, "LEADERINFO to the voter and both observers: {sent:?}");
}

#[test]
fn session_liveness_travels_to_the_leader() {
    let mut zab = follower_of_2(Persisted::default());
    assert!(!zab.touch(vec![SessionId(7)]), "not synchronised yet: nothing to tell");
    zab.on_message(2, Message::LeaderInfo { epoch: 1 });
    zab.on_message(2, Message::NewLeader { epoch: 1, zxid: Zxid::ZERO });
    zab.take_actions();
    assert!(zab.touch(vec![SessionId(7), SessionId(9)]));
    assert_eq!(
        sends(&zab.take_actions()),
        vec![(2, Message::Touch { epoch: 1, sessions: vec![SessionId(7), SessionId(9)] })]
    );
}

/// Runs `ticks` ticks of the servers in `up`, delivering every message among them at once
/// and making every append durable at once (links to servers not in `up` are down).
fn run_up(zabs: &mut std::collections::BTreeMap<ServerId, Zab>, up: &[ServerId], ticks: usize) {
    for _ in 0..ticks {
        for id in up {
            zabs.get_mut(id).expect("server").on_tick();
        }
        loop {
            let mut messages = Vec::new();
            for &id in up {
                let zab = zabs.get_mut(&id).expect("server");
                for action in zab.take_actions() {
                    match action {
                        Action::Send { to, msg } if up.contains(&to) => messages.push((id, to, msg)),
                        Action::Append { entries } => {
                            if let Some(last) = entries.last() {
                                zab.on_durable(last.zxid);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if messages.is_empty() {
                break;
            }
            for (from, to, msg) in messages {
                zabs.get_mut(&to).expect("server").on_message(from, msg);
            }
        }
    }
}

/// Server 1 holds (1,1) and (1,2), committed on servers 1 and 2; server 3 only (1,1).
/// Server 2's log was damaged and discarded: it restarts empty (its epochs kept).
fn after_a_discarded_log(resynchronising: bool) -> std::collections::BTreeMap<ServerId, Zab> {
    let with =
        |entries: Vec<LogEntry>| Persisted { accepted_epoch: 1, current_epoch: 1, snapshot_zxid: Zxid::ZERO, entries };
    let mut two = ZabConfig::new(2, vec![1, 2, 3]);
    two.resynchronising = resynchronising;
    [
        (1, Zab::new(ZabConfig::new(1, vec![1, 2, 3]), with(vec![entry(1, 1), entry(1, 2)]))),
        // Its accepted epoch stays (a promise); its current epoch, the history's, is reset.
        (2, Zab::new(two, Persisted { current_epoch: 0, ..with(Vec::new()) })),
        (3, Zab::new(ZabConfig::new(3, vec![1, 2, 3]), with(vec![entry(1, 1)]))),
    ]
    .into_iter()
    .collect()
}

#[test]
fn a_server_that_discarded_its_log_votes_for_no_one_until_a_leader_synchronised_it() {
    // Without abstaining, the emptied server and server 3 elect 3, which lacks (1,2): a
    // committed entry would be lost. This is what resynchronising prevents.
    let mut careless = after_a_discarded_log(false);
    run_up(&mut careless, &[2, 3], 30);
    assert!(careless[&3].role().is_leading(), "the danger: {:?}", careless[&3].role());

    let mut zabs = after_a_discarded_log(true);
    run_up(&mut zabs, &[2, 3], 30);
    assert_eq!(zabs[&3].role(), Role::Looking, "server 3 alone is no quorum");
    assert_eq!(zabs[&2].role(), Role::Looking, "server 2 neither leads nor helps elect");
    assert!(zabs[&2].abstaining());

    // Server 1 is back: 1 and 3 elect 1, and 2 joins it, is synchronised, and votes again.
    run_up(&mut zabs, &[1, 2, 3], 40);
    assert!(zabs[&1].role().is_leading(), "{:?}", zabs[&1].role());
    assert!(matches!(zabs[&2].role(), Role::Following { leader: 1, serving: true, .. }), "{:?}", zabs[&2].role());
    assert!(!zabs[&2].abstaining(), "synchronised: it votes again");
    assert_eq!(zabs[&2].history().last(), zabs[&1].history().last(), "it holds the leader's log");
}

#[test]
fn a_withdrawn_server_leaves_joins_no_one_and_looks_again_once_back() {
    let mut zab = follower_of_2(Persisted::default());
    zab.set_withdrawn(true);
    assert_eq!(zab.role(), Role::Looking, "a follower with a full disk leaves its leader");
    let notices = sends(&zab.take_actions());
    assert!(!notices.is_empty(), "it tells the others it looks");
    for (_, msg) in &notices {
        assert!(matches!(msg, Message::Notification { vote, .. } if *vote == Vote::NONE), "votes for no one: {msg:?}");
    }
    // The leadership it left is reported again by both members: it does not rejoin.
    let vote = Vote { epoch: 0, zxid: Zxid::ZERO, leader: 2 };
    zab.on_message(
        3,
        Message::Notification { round: 1, vote, state: Role::Following { leader: 2, epoch: 0, serving: true } },
    );
    zab.on_message(2, Message::Notification { round: 1, vote, state: Role::Leading { epoch: 0, established: true } });
    for _ in 0..100 {
        zab.on_tick();
    }
    assert_eq!(zab.role(), Role::Looking, "joins no leadership while withdrawn");
    zab.take_actions();

    zab.set_withdrawn(false);
    let own = Vote { epoch: 0, zxid: Zxid::ZERO, leader: 1 };
    assert!(
        sends(&zab.take_actions()).iter().any(|(_, m)| matches!(m, Message::Notification { vote, .. } if *vote == own)),
        "back in, it votes for itself again"
    );
    zab.on_message(
        3,
        Message::Notification { round: 1, vote, state: Role::Following { leader: 2, epoch: 0, serving: true } },
    );
    zab.on_message(2, Message::Notification { round: 1, vote, state: Role::Leading { epoch: 0, established: true } });
    assert_eq!(zab.role(), Role::Following { leader: 2, epoch: 0, serving: false }, "and rejoins the leadership");
}

#[test]
fn a_lone_voter_never_withdraws() {
    let mut zab = Zab::new(ZabConfig::new(1, vec![1]), Persisted::default());
    zab.set_withdrawn(true);
    assert!(!zab.withdrawn());
    assert_eq!(zab.role(), Role::Leading { epoch: 1, established: true }, "it is the whole ensemble; reads go on");
}

/// Three fresh servers run until one of them leads; returns them and the leader's id.
fn three_with_a_leader() -> (std::collections::BTreeMap<ServerId, Zab>, ServerId) {
    let mut zabs: std::collections::BTreeMap<ServerId, Zab> =
        (1..=3).map(|id| (id, Zab::new(ZabConfig::new(id, vec![1, 2, 3]), Persisted::default()))).collect();
    run_up(&mut zabs, &[1, 2, 3], 10);
    let leader = *zabs.iter().find(|(_, z)| z.role().is_leading()).expect("a leader").0;
    (zabs, leader)
}

/// The confirmation rounds asked by the pings among `actions` (0: a heartbeat only).
fn ping_rounds(actions: &[Action]) -> Vec<u64> {
    sends(actions)
        .into_iter()
        .filter_map(|(_, m)| if let Message::Ping { round, .. } = m { Some(round) } else { None })
        .collect()
}

#[test]
fn a_leader_answers_a_sync_only_after_a_quorum_confirmed_it_leads_since() {
    let (mut zabs, leader) = three_with_a_leader();
    let Role::Leading { epoch, established: true } = zabs[&leader].role() else { panic!("not established") };
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let l = zabs.get_mut(&leader).expect("leader");
    let synced = |actions: &[Action]| -> Vec<u64> {
        actions.iter().filter_map(|a| if let Action::Synced { id, .. } = a { Some(*id) } else { None }).collect()
    };

    assert!(l.sync(7));
    let actions = l.take_actions();
    assert!(synced(&actions).is_empty(), "nothing in flight, yet no answer before a quorum confirms: {actions:?}");
    let round = *ping_rounds(&actions).first().expect("a confirmation round");
    assert!(round > 0);
    // Another sync while that round is in flight needs the next round: the answers to this
    // one may predate it.
    assert!(l.sync(8));
    assert!(l.take_actions().is_empty());
    l.on_message(follower, Message::Heard { epoch, round: round - 1 });
    assert!(synced(&l.take_actions()).is_empty(), "an answer to an earlier round does not count");
    l.on_message(follower, Message::Heard { epoch, round });
    let actions = l.take_actions();
    assert_eq!(synced(&actions), vec![7], "a quorum (leader and one follower) confirmed");
    assert_eq!(ping_rounds(&actions), vec![round + 1, round + 1], "the next round starts for the sync that waits");
    l.on_message(follower, Message::Heard { epoch, round: round + 1 });
    assert_eq!(synced(&l.take_actions()), vec![8]);

    // A leader its followers have left (withdrawn, or cut off without a reset) never answers.
    assert!(l.sync(9));
    for _ in 0..50 {
        l.on_tick();
        assert!(synced(&l.take_actions()).is_empty());
    }
    assert_eq!(l.role(), Role::Looking, "and steps down at its sync limit");
}

#[test]
fn a_confirmation_round_whose_ping_was_lost_is_asked_again_at_the_next_heartbeat() {
    let (mut zabs, leader) = three_with_a_leader();
    let Role::Leading { epoch, .. } = zabs[&leader].role() else { panic!("not leading") };
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let l = zabs.get_mut(&leader).expect("leader");
    assert!(l.sync(1));
    let first = ping_rounds(&l.take_actions());
    let round = first[0];
    // Those pings are lost. The next heartbeat asks the same round again...
    l.on_tick();
    let again = ping_rounds(&l.take_actions());
    assert!(!again.is_empty() && again.iter().all(|r| *r == round), "{again:?}");
    // ...and one answer to it confirms the sync.
    l.on_message(follower, Message::Heard { epoch, round });
    assert!(l.take_actions().iter().any(|a| matches!(a, Action::Synced { id: 1, .. })));
    // Once confirmed, heartbeats ask nothing.
    l.on_tick();
    assert!(sends(&l.take_actions()).iter().all(|(_, m)| !matches!(m, Message::Ping { round: r, .. } if *r > 0)));
}
