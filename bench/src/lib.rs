//! baton-bench: drives ZooKeeper-protocol servers (Baton, Apache ZooKeeper) through the
//! `zookeeper-client` crate and etcd through the `etcd-client` crate, with the same
//! workloads, closed or open loop; `compare` and `sweep` start the servers themselves and
//! report side by side (tables, JSON, SVG plots).
