//! Events that tasks on any executor wait for without polling: stopping, the write path
//! done, the process asked to shut down (SIGTERM/SIGINT).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};

/// A flag that is set once and wakes everyone waiting for it, on any thread. (glommio
/// wakers may be woken from another thread: the wake is queued on the owning executor.)
#[derive(Debug, Default)]
pub struct Event {
    set: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl Event {
    /// Sets the event and wakes every waiter.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiters {
            w.wake();
        }
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the event is set.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.is_set() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock: `set` takes the list after setting the flag.
            if self.is_set() {
                return Poll::Ready(());
            }
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

static SHUTDOWN: OnceLock<Arc<Event>> = OnceLock::new();

/// The event SIGTERM and SIGINT set (a thread of its own receives the signals and sets it;
/// the handler itself does nothing else).
pub fn shutdown() -> Arc<Event> {
    SHUTDOWN
        .get_or_init(|| {
            let event = Arc::new(Event::default());
            let signals = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT];
            match signal_hook::iterator::Signals::new(signals) {
                Ok(mut signals) => {
                    let set = event.clone();
                    let spawned = std::thread::Builder::new().name("baton-signals".into()).spawn(move || {
                        if signals.forever().next().is_some() {
                            set.set();
                        }
                    });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "no signal thread; SIGTERM will stop the process abruptly");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot handle signals; they will stop the process abruptly"),
            }
            event
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_wakes_a_task_on_another_executor() {
        let event = Arc::new(Event::default());
        let waiting = event.clone();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                waiting.wait().await;
                waiting.is_set()
            })
            .expect("executor");
        std::thread::sleep(std::time::Duration::from_millis(20));
        event.set();
        assert!(executor.join().expect("joined"));
        // Once set, it stays set.
        futures_lite::future::block_on(event.wait());
    }
}
