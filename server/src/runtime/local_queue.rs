//! Waiting between the tasks of one executor, without polling: a queue whose consumer
//! sleeps until an item arrives (and whose producers can wait for room), and a
//! notification that wakes whoever waits for a condition to become true.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

struct Inner<T> {
    items: VecDeque<T>,
    consumer: Option<Waker>,
    /// Producers waiting for the queue to shrink.
    room: Vec<Waker>,
}

/// A queue between the tasks of one executor. Unbounded by itself: its producers bound it
/// (peer links bound their own buffers; a proposer waits with [`LocalQueue::until_below`]).
pub struct LocalQueue<T> {
    inner: RefCell<Inner<T>>,
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        LocalQueue { inner: RefCell::new(Inner { items: VecDeque::new(), consumer: None, room: Vec::new() }) }
    }
}

impl<T> LocalQueue<T> {
    /// Adds an item and wakes the consumer.
    pub fn push(&self, item: T) {
        let mut inner = self.inner.borrow_mut();
        inner.items.push_back(item);
        if let Some(w) = inner.consumer.take() {
            w.wake();
        }
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> T {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.items.pop_front() {
                Some(item) => {
                    for w in inner.room.drain(..) {
                        w.wake();
                    }
                    Poll::Ready(item)
                }
                None => {
                    inner.consumer = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.inner.borrow().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.inner.borrow().items.is_empty()
    }

    /// Resolves once fewer than `max` items are queued.
    pub async fn until_below(&self, max: usize) {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.items.len() < max {
                return Poll::Ready(());
            }
            inner.room.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Wakes the tasks of one executor that wait for a condition (checked again at each
/// [`LocalNotify::notify`]).
#[derive(Default)]
pub struct LocalNotify {
    waiters: RefCell<Vec<Waker>>,
}

impl LocalNotify {
    /// Wakes every waiter to check its condition again.
    pub fn notify(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once `condition` holds (checked now and at each notification).
    pub async fn until(&self, mut condition: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if condition() {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_full_queue_holds_its_producer_until_the_consumer_takes_an_item() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
        executor.run(async {
            let queue: Rc<LocalQueue<u32>> = Rc::new(LocalQueue::default());
            queue.push(1);
            queue.push(2);
            let producer = {
                let queue = queue.clone();
                glommio::spawn_local(async move {
                    queue.until_below(2).await;
                    queue.push(3);
                })
            };
            glommio::yield_if_needed().await;
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(queue.len(), 2, "the producer waits for room");
            assert_eq!(queue.pop().await, 1);
            producer.await;
            assert_eq!((queue.pop().await, queue.pop().await), (2, 3));
            let notify = Rc::new(LocalNotify::default());
            let flag = Rc::new(std::cell::Cell::new(false));
            let waiter = {
                let (notify, flag) = (notify.clone(), flag.clone());
                glommio::spawn_local(async move { notify.until(|| flag.get()).await })
            };
            flag.set(true);
            notify.notify();
            waiter.await;
        });
    }
}
