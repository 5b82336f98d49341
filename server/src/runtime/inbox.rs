//! A queue from any thread to one glommio task: a crossbeam channel carries the items, and
//! the receiving task's waker is parked beside it. glommio wakers may be woken from another
//! thread (the wake is queued on the owning executor, which an eventfd rouses from
//! io_uring), so a sender never blocks and never spins.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError};

/// The sending side; cheap to clone.
pub struct Outbox<T> {
    tx: Sender<T>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox { tx: self.tx.clone(), waker: self.waker.clone() }
    }
}

/// The receiving side, owned by one task at a time.
pub struct Inbox<T> {
    rx: Receiver<T>,
    waker: Arc<Mutex<Option<Waker>>>,
}

/// A new unbounded queue. Unbounded on purpose: the sequencer pushes committed changes
/// while it holds the tree's write lock and must never wait for a slow shard there; what
/// bounds it is the sequencer's own in-flight limit.
pub fn inbox<T>() -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = channel::unbounded();
    let waker = Arc::new(Mutex::new(None));
    (Outbox { tx, waker: waker.clone() }, Inbox { rx, waker })
}

/// A queue of at most `cap` items, whose senders block while it is full: for a thread the
/// receiving task paces (a snapshot made as a peer link drains), never for an executor.
pub fn bounded_inbox<T>(cap: usize) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = channel::bounded(cap);
    let waker = Arc::new(Mutex::new(None));
    (Outbox { tx, waker: waker.clone() }, Inbox { rx, waker })
}

impl<T> Drop for Outbox<T> {
    /// The last sender gone is news to a receiver waiting: `recv` answers `None` then.
    fn drop(&mut self) {
        // Disconnect first (a sender that goes with no other left), then wake: woken
        // before, the receiver could look, find the channel still open, and park for good.
        let (unconnected, _) = channel::bounded(0);
        drop(std::mem::replace(&mut self.tx, unconnected));
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Outbox<T> {
    /// Queues `item` and wakes the receiver; `false` if the receiver is gone.
    pub fn send(&self, item: T) -> bool {
        if self.tx.send(item).is_err() {
            return false;
        }
        // A poisoned lock only means another sender panicked mid-wake; the slot is still valid.
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

impl<T> Inbox<T> {
    /// The next item, if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// The next item, waiting for one; `None` once every sender is gone.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Inbox::recv`] as a poll: the task is woken when an item arrives or the last sender
    /// goes.
    pub fn poll_recv(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        match self.rx.try_recv() {
            Ok(item) => return Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // An item sent (or the last sender dropped) between the check and parking the waker
        // found no waker to wake.
        match self.rx.try_recv() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_a_task_on_another_executor() {
        let (tx, rx) = inbox::<u32>();
        let receiver = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut got = Vec::new();
                while let Some(v) = rx.recv().await {
                    got.push(v);
                }
                got
            })
            .expect("executor");
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                assert!(tx.send(i));
                if i % 100 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        sender.join().expect("sender");
        assert_eq!(receiver.join().expect("receiver"), (0..1000).collect::<Vec<_>>());
    }
}
