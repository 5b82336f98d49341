//! Tasks and timers for the etcd front's handlers, on the glommio shard that serves them.

use std::future::Future;
use std::time::Duration;

/// Runs `task` beside the caller, on the caller's shard.
pub fn spawn<F>(task: F)
where
    F: Future<Output = ()> + 'static,
{
    glommio::spawn_local(task).detach();
}

/// Waits `d` on the caller's shard, as a future that may move between threads (tonic's
/// handlers must be): glommio's own timer may not, so a task of the shard keeps it.
pub async fn sleep(d: Duration) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(async move {
        glommio::timer::sleep(d).await;
        let _ = tx.send(());
    });
    let _ = rx.await;
}
