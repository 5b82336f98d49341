//! What the etcd client tests share: a connected `etcd-client`, a runtime bounded in time,
//! and a failed call's gRPC status.

use std::time::Duration;

use etcd_client::Client;

/// The `etcd-client` crate connected to 127.0.0.1:`port` (within 10 s).
pub async fn connect(port: u16) -> Client {
    tokio::time::timeout(Duration::from_secs(10), Client::connect([format!("http://127.0.0.1:{port}")], None))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Runs `f` on a two-thread tokio runtime, failing the test past 60 s.
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), f).await.expect("test finished within 60 s") });
}

/// The gRPC status of a failed call.
pub fn grpc<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (tonic::Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}
