//! baton-bench: drives ZooKeeper-protocol servers (Baton, Apache ZooKeeper) through the
//! `zookeeper-client` crate and etcd through the `etcd-client` crate, with the same
//! workloads. Open-loop mode, the `compare` command and plots are still to come (issue 5).
