//! A queue between the tasks of one executor: push from any of them, await the next item.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Unbounded by itself: its producers are (peer links bound their own buffers; ticks and
/// durability notices are one per event).
pub struct LocalQueue<T> {
    inner: RefCell<(VecDeque<T>, Option<Waker>)>,
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        LocalQueue { inner: RefCell::new((VecDeque::new(), None)) }
    }
}

impl<T> LocalQueue<T> {
    /// Adds an item and wakes the consumer.
    pub fn push(&self, item: T) {
        let mut inner = self.inner.borrow_mut();
        inner.0.push_back(item);
        if let Some(w) = inner.1.take() {
            w.wake();
        }
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> T {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.0.pop_front() {
                Some(item) => Poll::Ready(item),
                None => {
                    inner.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}
