//! baton-bench: the load generator for Baton, ZooKeeper and etcd (issue 5). Not built yet;
//! see `bench/README.md`.
