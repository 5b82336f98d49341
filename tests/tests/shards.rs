//! Several shards in one server: clients spread over them by SO_REUSEPORT, writes from every
//! shard go through the one sequencer, and a watch set on one shard fires before its client
//! can read the change, wherever the write came from.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use baton_tests::raw::RawClient;
use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

const NODE_DATA_CHANGED: i32 = 3;

fn mntr(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect for mntr");
    s.write_all(b"mntr").expect("send mntr");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn shard_connections(addr: SocketAddr) -> Vec<usize> {
    let text = mntr(addr);
    (0..)
        .map_while(|i| {
            let key = format!("baton_shard_{i}_connections\t");
            text.lines().find_map(|l| l.strip_prefix(key.as_str())).and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

#[test]
fn watches_fire_before_the_data_is_visible_across_shards() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &["--cores", "2"]);
    let mut clients: Vec<RawClient> = Vec::new();
    // Connect until both shards hold clients (each connection lands on one of the two by
    // the hash of its address; 40 all on one side would be a 2^-39 chance).
    while clients.len() < 40 {
        clients.push(RawClient::connect(server.addr, 10_000, None).expect("connect"));
        let per_shard = shard_connections(server.addr);
        assert_eq!(per_shard.len(), 2, "mntr lists two shards");
        if clients.len() >= 6 && per_shard.iter().all(|&n| n >= 2) {
            break;
        }
    }
    let per_shard = shard_connections(server.addr);
    assert!(per_shard.iter().all(|&n| n >= 1), "clients on both shards: {per_shard:?}");
    assert_eq!(clients[0].create("/x", b"0", 0).expect("create").err, 0);

    for round in 1..=40u32 {
        let value = round.to_string().into_bytes();
        for c in clients.iter_mut() {
            let (_, data) = c.get_data("/x", true).expect("getData with watch");
            assert_eq!(data, (round - 1).to_string().into_bytes(), "every client saw the previous round");
        }
        // The writer rotates, so writes come from both shards.
        let writer = round as usize % clients.len();
        let (writer_events, reply) = clients[writer].set_data("/x", &value).expect("setData");
        assert_eq!(reply.err, 0);
        for (i, c) in clients.iter_mut().enumerate() {
            // The writer watches too: its event comes before its own reply.
            let mut notified = i == writer && writer_events.iter().any(|(kind, _)| *kind == NODE_DATA_CHANGED);
            assert!(i != writer || notified, "round {round}: the writer's event precedes its reply");
            let mut tries = 0;
            loop {
                let (events, data) = c.get_data("/x", false).expect("getData");
                notified |= events.iter().any(|(kind, path)| *kind == NODE_DATA_CHANGED && path == "/x");
                if data == value {
                    assert!(notified, "round {round}: client {i} read the new data before its watch event");
                    break;
                }
                tries += 1;
                assert!(tries < 1000, "round {round}: client {i} never saw the write");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let text = mntr(server.addr);
    assert!(text.contains("zk_watch_count\t0"), "every one-shot watch fired once:\n{text}");
    let mut server = server;
    server.kill();
}
