//! The etcd target: the same closed loop as the ZooKeeper one, through the `etcd-client`
//! crate (etcd's v3 gRPC API).

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use etcd_client::{Client, GetOptions, PutOptions};
use hdrhistogram::Histogram;

use super::{EtcdArgs, EtcdWorkload, Window};

pub async fn run(args: EtcdArgs) -> anyhow::Result<()> {
    let root = format!("/bench-{}", std::process::id());
    let connect = || async {
        Client::connect([args.target.as_str()], None)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.target))
    };
    let mut admin = connect().await?;
    let value = vec![b'v'; args.value_bytes];
    let window = Window::new()?;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = connect().await?;
        let key = format!("{root}/k{c}");
        client.kv_client().put(key.as_str(), value.clone(), None).await.context("creating a key")?;
        let lease = match args.workload {
            EtcdWorkload::CreateDelete => Some(client.lease_client().grant(60, None).await?.id()),
            _ => None,
        };
        for d in 0..args.depth {
            let (mut kv, key, value, window, workload) =
                (client.kv_client(), key.clone(), value.clone(), window.clone(), args.workload);
            let mine = format!("{key}-e{d}");
            let get = if args.serializable { Some(GetOptions::new().with_serializable()) } else { None };
            tasks.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut n = 0u64;
                while !window.stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match workload {
                        EtcdWorkload::Write => {
                            kv.put(key.as_str(), value.clone(), None).await?;
                        }
                        EtcdWorkload::Read => {
                            let got = kv.get(key.as_str(), get.clone()).await?;
                            anyhow::ensure!(got.kvs().len() == 1, "key {key} missing");
                        }
                        EtcdWorkload::CreateDelete => {
                            let leased = lease.map(|l| PutOptions::new().with_lease(l));
                            kv.put(mine.as_str(), value.clone(), leased).await?;
                            kv.delete(mine.as_str(), None).await?;
                        }
                    }
                    if window.measuring.load(Ordering::Relaxed) {
                        local.record(t.elapsed().as_nanos() as u64)?;
                        n += 1;
                    }
                }
                window.add(n, &local)
            }));
        }
    }
    let elapsed = window.run(args.seconds).await;
    for t in tasks {
        t.await??;
    }
    // The counted operations really happened.
    match args.workload {
        EtcdWorkload::Write => {
            for c in 0..args.clients {
                let got = admin.get(format!("{root}/k{c}"), None).await?;
                let kv = got.kvs().first().with_context(|| format!("key {c} missing"))?;
                anyhow::ensure!(kv.value() == value.as_slice() && kv.version() > 1, "key {c} was not written");
            }
        }
        EtcdWorkload::CreateDelete => {
            let left = admin.get(format!("{root}/"), Some(GetOptions::new().with_prefix().with_count_only())).await?;
            anyhow::ensure!(left.count() as usize == args.clients, "leased keys left behind: {}", left.count());
        }
        EtcdWorkload::Read => {}
    }
    admin.delete(root.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix())).await?;
    let consistency = match (args.workload, args.serializable) {
        (EtcdWorkload::Read, true) => " serializable",
        (EtcdWorkload::Read, false) => " linearizable",
        _ => "",
    };
    window.report(
        format!(
            "{:<10} {:?}{consistency} clients={} depth={} value={}B",
            args.label, args.workload, args.clients, args.depth, args.value_bytes
        ),
        elapsed,
    )
}
