//! The in-process queue in front of SQLite's single writer, with two
//! priorities: a request's write goes ahead of every queued background write
//! (consumer flushes, offset commits, the relay's bookkeeping).
//!
//! Why: orderflow's API answers an order in one short transaction, while the
//! consumer groups write all the time. Behind a plain FIFO lock the order
//! transaction waits for every consumer transaction queued before it, which
//! is what made v2's order request p99 hundreds of milliseconds. With two
//! queues it waits at most for the one write that holds the lock now; the
//! consumers lose nothing, since they batch their effects into few, short
//! group commits anyway and are not latency-bound.
//!
//! Why hand-written: the priority locks on crates.io (async-priority-lock,
//! priority-async-mutex) hand out guards that borrow the lock, while a
//! [`super::Writer`] is a `'static` transaction that owns its turn. The
//! queue is a few lines over `tokio::sync::oneshot`; the one subtle case,
//! a waiter that is cancelled right after being handed the lock, is handled
//! in [`Waiting`]'s `Drop`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

pub use crate::sql::WritePriority;

/// The two queues and whether the writer is taken.
#[derive(Default)]
struct State {
    held: bool,
    requests: VecDeque<oneshot::Sender<()>>,
    background: VecDeque<oneshot::Sender<()>>,
}

/// The writer queue of one database (shared by every clone of the store).
#[derive(Default, Clone)]
pub(crate) struct WriterQueue {
    state: Arc<Mutex<State>>,
}

/// Holding the writer. Dropping it hands the writer to the next waiter:
/// the oldest request, else the oldest background writer.
pub struct WriterTurn {
    queue: WriterQueue,
}

impl WriterQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding this lock; recover rather than poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the writer. Cancel-safe: dropping the future gives up the
    /// place in the queue (or the writer, if it was handed over meanwhile).
    pub(crate) async fn acquire(&self, priority: WritePriority) -> WriterTurn {
        let receiver = {
            let mut state = self.state();
            if !state.held {
                state.held = true;
                return WriterTurn {
                    queue: self.clone(),
                };
            }
            let (sender, receiver) = oneshot::channel();
            match priority {
                WritePriority::Request => state.requests.push_back(sender),
                WritePriority::Background => state.background.push_back(sender),
            }
            receiver
        };
        let mut waiting = Waiting {
            queue: self.clone(),
            receiver: Some(receiver),
        };
        let receiver = waiting.receiver.as_mut().expect("set above");
        // The sender lives in the queue until it is used, so this only fails
        // if the queue itself is gone, which cannot happen while `self` lives.
        let _ = receiver.await;
        waiting.receiver = None;
        WriterTurn {
            queue: self.clone(),
        }
    }

    /// Passes the writer to the next live waiter, or marks it free.
    fn release(&self) {
        let mut state = self.state();
        while let Some(next) = state
            .requests
            .pop_front()
            .or_else(|| state.background.pop_front())
        {
            // Fails only when that waiter was cancelled: try the next one.
            if next.send(()).is_ok() {
                return;
            }
        }
        state.held = false;
    }

    /// Waiters in each queue, for tests.
    #[cfg(test)]
    fn waiting(&self) -> (usize, usize) {
        let state = self.state();
        (state.requests.len(), state.background.len())
    }
}

impl Drop for WriterTurn {
    fn drop(&mut self) {
        self.queue.release();
    }
}

/// A place in the queue while its owner waits.
struct Waiting {
    queue: WriterQueue,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        // Cancelled while waiting. Closing first makes a later hand-over fail
        // (so `release` skips us); if the hand-over happened already, the
        // writer is ours and must be passed on.
        receiver.close();
        if receiver.try_recv().is_ok() {
            self.queue.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_go_ahead_of_queued_background_writes() {
        let queue = WriterQueue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = queue.acquire(WritePriority::Background).await;
        let mut tasks = Vec::new();
        for (name, priority) in [
            ("background-1", WritePriority::Background),
            ("background-2", WritePriority::Background),
            ("request-1", WritePriority::Request),
            ("request-2", WritePriority::Request),
        ] {
            let (waiter, order) = (queue.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = waiter.acquire(priority).await;
                order.lock().unwrap().push(name);
            }));
            // Queue them in this order.
            while queue.waiting().0 + queue.waiting().1 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["request-1", "request-2", "background-1", "background-2"]
        );
    }

    #[tokio::test]
    async fn a_cancelled_waiter_never_keeps_the_writer() {
        let queue = WriterQueue::default();
        let turn = queue.acquire(WritePriority::Request).await;
        // Cancelled while queued.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            queue.acquire(WritePriority::Request),
        )
        .await;
        assert!(cancelled.is_err());
        // Handed the writer, then dropped before it looked: passed on.
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.acquire(WritePriority::Background).await })
        };
        while queue.waiting().1 == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        drop(turn);
        let _ = waiter.await;
        let again = tokio::time::timeout(
            Duration::from_secs(5),
            queue.acquire(WritePriority::Request),
        )
        .await;
        assert!(again.is_ok(), "the writer was lost");
    }
}
