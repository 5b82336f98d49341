//! baton-bench: drives ZooKeeper-protocol servers (Baton, Apache ZooKeeper) with the same
//! workload through a third-party client (`zookeeper-client`). The etcd target, open-loop
//! mode, the `compare` command and plots are issue 5.
