//! The in-process queue in front of SQLite's single writer, with two
//! priorities: a request's write goes ahead of every queued background write
//! (consumer flushes, offset commits, the relay's bookkeeping), unless that
//! background write has waited its bound already (by default
//! [`DEFAULT_BACKGROUND_WAIT`]; `SqliteStore::with_background_wait`).
//!
//! Why: orderflow's API answers an order in one short transaction, while the
//! consumer groups write all the time. Behind a plain FIFO lock the order
//! transaction waits for every consumer transaction queued before it, which
//! is what made v2's order request p99 hundreds of milliseconds. With two
//! queues it waits at most for the one write that holds the lock now; the
//! consumers lose nothing, since they batch their effects into few, short
//! group commits anyway and are not latency-bound.
//!
//! Why the bound: under a steady stream of requests (a closed loop of
//! shoppers), strict priority starved the group commits: the API took
//! orders faster than the pipeline could write what they caused, and
//! confirmation fell seconds behind. An overdue background write goes next,
//! one at a time: a request waits at most for the write holding the lock
//! and one such background write, and the pipeline's share of the writer
//! never drops to nothing. Why 10 ms (measured, docs/benchmarks.md, "The
//! group commit's cap and the writer's bound"): every hop of an order
//! (fraud, inventory, payment, orders) waits up to this bound for its group
//! commit, so it adds up along the flow. In the default bench (closed loop,
//! group commits of up to 256 effects), with 40 ms an order was confirmed
//! 495 and 563 ms p99 after it was accepted, with 10 ms 267 and 292 ms,
//! with 5 ms 222 and 294 ms but a slower order request (p99 88 against
//! 77 ms). Open loop at 1,000 orders a second, with 10 ms the API answered
//! 952 of them and they were confirmed 551 ms p99; with 20 ms it answered
//! 828, confirmed 1,971 ms p99. (At 5 ms, long ago, before transactions
//! chained, the group commits came in so often and so small that the writer
//! could no longer take 1,000 orders a second.)
//!
//! Write transactions queued together commit together: the one holding the
//! writer hands its open transaction to the next waiter instead of
//! committing (a [`Chain`]; each joined one writes in a savepoint of it),
//! within a bound on how long the chain holds the writer.
//!
//! Why hand-written: the priority locks on crates.io (async-priority-lock,
//! priority-async-mutex) hand out guards that borrow the lock, while a
//! [`super::Writer`] is a `'static` transaction that owns its turn. The
//! queue is a few lines over `tokio::sync::oneshot`; the one subtle case,
//! a waiter that is cancelled right after being handed the lock, is handled
//! in [`Waiting`]'s `Drop`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orderflow_core::ports::store::StoreError;
use tokio::sync::{OwnedMutexGuard, oneshot};

use super::direct::DirectConn;

pub use crate::sql::WritePriority;

/// A background write that has waited this long goes ahead of requests,
/// unless set otherwise.
pub const DEFAULT_BACKGROUND_WAIT: Duration = Duration::from_millis(10);

/// Histogram `{priority}`: how long a write waited for SQLite's writer.
pub const WRITER_WAIT_SECONDS: &str = "orderflow_db_writer_wait_seconds";
/// Histogram `{priority}`: how long a write held SQLite's writer.
pub const WRITER_HELD_SECONDS: &str = "orderflow_db_writer_held_seconds";

/// The two queues and whether the writer is taken.
struct State {
    /// How long a background write waits at most while requests go first;
    /// `None`: requests always go first.
    background_wait: Option<Duration>,
    held: bool,
    requests: VecDeque<Waiter>,
    background: VecDeque<Waiter>,
    /// The last hand-over put an overdue background write ahead of a
    /// request: the next one serves the requests again.
    bumped: bool,
    /// How long a [`Chain`] may hold the writer ([`Chain::MAX_HELD`]; tests
    /// on a busy machine set more).
    chain_held_max: Duration,
}

impl Default for State {
    fn default() -> Self {
        Self {
            background_wait: Some(DEFAULT_BACKGROUND_WAIT),
            held: false,
            requests: VecDeque::new(),
            background: VecDeque::new(),
            bumped: false,
            chain_held_max: Chain::MAX_HELD,
        }
    }
}

/// A write waiting for the writer.
struct Waiter {
    since: Instant,
    /// A write transaction that may continue a [`Chain`] (not a lone
    /// statement or a checkpoint, which need a transaction of their own).
    joins: bool,
    sender: oneshot::Sender<Handover>,
}

/// Which queue the next waiter comes from, and whether it is an overdue
/// background write put ahead of requests.
#[derive(Clone, Copy)]
enum Pick {
    Request,
    Background { overdue: bool },
}

/// What a waiter is handed with the writer: an open [`Chain`] to continue,
/// or nothing (a fresh start).
pub(crate) type Handover = Option<Chain>;

/// Write transactions joined into one SQLite transaction: each joined one
/// wrote inside a savepoint of it and waits for its `COMMIT`.
///
/// Why: a `COMMIT` writes every page the transaction changed to the WAL,
/// and an order's rows go to about twenty tables and indexes, most of them
/// at the same last pages the next order's rows go to. Under load the consumer groups commit small flushes all the time
/// and every order request commits alone: about five commits per order.
/// When transactions are queued, the one holding the writer hands its open
/// transaction to the next one instead of committing (in the order the
/// queue would serve them anyway: requests first); the last one commits
/// for all. Each joined transaction is still its own unit: one that fails
/// rolls back to its savepoint alone, and its neighbours commit. A request
/// in a chain waits for the chain's `COMMIT`, at most [`Chain::MAX_HELD`]
/// after the chain began.
///
/// The chain carries the writer connection from one holder to the next, so
/// whoever holds the chain can always finish it.
pub(crate) struct Chain {
    started: Instant,
    joined: Vec<Joined>,
    pub(crate) conn: Option<OwnedMutexGuard<DirectConn>>,
}

/// A transaction of a [`Chain`] that finished its writes.
struct Joined {
    done: oneshot::Sender<Result<(), StoreError>>,
    committed: Box<dyn FnOnce() + Send>,
}

impl Chain {
    /// Transactions joined at most before the chain commits.
    pub(crate) const MAX_JOINED: usize = 64;
    /// The chain commits once it has held the writer this long: what a
    /// request in it may wait for the others.
    pub(crate) const MAX_HELD: Duration = Duration::from_millis(2);

    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            joined: Vec::new(),
            conn: None,
        }
    }

    /// Adds a transaction whose writes are done; `committed` runs after the
    /// `COMMIT`, in the order they joined, before the writer is handed on.
    /// The receiver gets the `COMMIT`'s result.
    pub(crate) fn join(
        &mut self,
        committed: Box<dyn FnOnce() + Send>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, receiver) = oneshot::channel();
        self.joined.push(Joined { done, committed });
        receiver
    }

    /// How many transactions joined.
    pub(crate) fn len(&self) -> usize {
        self.joined.len()
    }

    /// Commits what the chain holds on `conn` (rolls back if the `COMMIT`
    /// fails), runs the `committed` steps on success, and tells every joined
    /// transaction; the `COMMIT`'s result.
    pub(crate) fn commit(self, conn: &mut DirectConn) -> Result<(), StoreError> {
        let result = conn.commit_or_roll_back();
        for joined in self.joined {
            if result.is_ok() {
                (joined.committed)();
            }
            // The joined transaction may have been dropped meanwhile.
            let _ = joined.done.send(result.clone());
        }
        result
    }
}

impl State {
    /// The next waiter: the oldest request, unless the oldest background
    /// write has waited its bound (and the last hand-over was not such a
    /// bump, so a request waits for one at most).
    fn next(&mut self, now: Instant) -> Option<oneshot::Sender<Handover>> {
        let pick = self.pick(now)?;
        self.take(pick)
    }

    /// Where the next waiter comes from (see [`Self::next`]).
    fn pick(&self, now: Instant) -> Option<Pick> {
        if !self.bumped && !self.requests.is_empty() && self.background_overdue(now) {
            Some(Pick::Background { overdue: true })
        } else if !self.requests.is_empty() {
            Some(Pick::Request)
        } else if !self.background.is_empty() {
            Some(Pick::Background { overdue: false })
        } else {
            None
        }
    }

    fn take(&mut self, pick: Pick) -> Option<oneshot::Sender<Handover>> {
        let (queue, overdue) = match pick {
            Pick::Request => (&mut self.requests, false),
            Pick::Background { overdue } => (&mut self.background, overdue),
        };
        let waiter = queue.pop_front()?;
        self.bumped = overdue;
        Some(waiter.sender)
    }

    /// Whether the oldest background write has waited its bound.
    fn background_overdue(&self, now: Instant) -> bool {
        self.background_wait.is_some_and(|bound| {
            self.background
                .front()
                .is_some_and(|waiter| now.duration_since(waiter.since) >= bound)
        })
    }

    /// The waiter [`Self::next`] would serve, if it may continue `chain`:
    /// it is a transaction, and the chain is within its bounds.
    fn next_joiner(&mut self, chain: &Chain, now: Instant) -> Option<oneshot::Sender<Handover>> {
        let pick = self.pick(now)?;
        let front = match pick {
            Pick::Request => self.requests.front(),
            Pick::Background { .. } => self.background.front(),
        }?;
        let within = chain.len() < Chain::MAX_JOINED
            && now.duration_since(chain.started) < self.chain_held_max;
        if front.joins && within {
            self.take(pick)
        } else {
            None
        }
    }
}

/// The writer queue of one database (shared by every clone of the store).
#[derive(Default, Clone)]
pub(crate) struct WriterQueue {
    state: Arc<Mutex<State>>,
}

/// Holding the writer. Dropping it hands the writer to the next waiter:
/// the oldest request, else the oldest background writer (first if it has
/// waited [`DEFAULT_BACKGROUND_WAIT`]).
pub struct WriterTurn {
    queue: WriterQueue,
    priority: WritePriority,
    since: Instant,
    /// Handed on with a [`Chain`]: the writer stays taken.
    passed: bool,
}

impl WriterQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding this lock; recover rather than poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a background write waits at most while requests go first;
    /// `None`: requests always go first.
    pub(crate) fn set_background_wait(&self, bound: Option<Duration>) {
        self.state().background_wait = bound;
    }

    /// Waits for the writer. Cancel-safe: dropping the future gives up the
    /// place in the queue (or the writer, if it was handed over meanwhile).
    pub(crate) async fn acquire(&self, priority: WritePriority) -> WriterTurn {
        self.acquire_joining(priority, false).await.0
    }

    /// [`Self::acquire`] for a write transaction (`joins`): it may be handed
    /// an open [`Chain`] to continue.
    pub(crate) async fn acquire_joining(
        &self,
        priority: WritePriority,
        joins: bool,
    ) -> (WriterTurn, Handover) {
        let asked = Instant::now();
        let receiver = {
            let mut state = self.state();
            if !state.held {
                state.held = true;
                return (self.turn(priority, asked), None);
            }
            let (sender, receiver) = oneshot::channel();
            let waiter = Waiter {
                since: asked,
                joins,
                sender,
            };
            match priority {
                WritePriority::Request => state.requests.push_back(waiter),
                WritePriority::Background => state.background.push_back(waiter),
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
        let handover = receiver.await.unwrap_or(None);
        waiting.receiver = None;
        (self.turn(priority, asked), handover)
    }

    fn turn(&self, priority: WritePriority, asked: Instant) -> WriterTurn {
        let since = Instant::now();
        metrics::histogram!(WRITER_WAIT_SECONDS, "priority" => priority.as_str())
            .record(since.duration_since(asked).as_secs_f64());
        WriterTurn {
            queue: self.clone(),
            priority,
            since,
            passed: false,
        }
    }

    /// Passes the writer to the next live waiter, or marks it free.
    fn release(&self) {
        let mut state = self.state();
        let now = Instant::now();
        while let Some(next) = state.next(now) {
            // Fails only when that waiter was cancelled: try the next one.
            if next.send(None).is_ok() {
                return;
            }
        }
        state.held = false;
    }

    /// How long a chain may hold the writer (tests on a busy machine).
    #[cfg(test)]
    pub(crate) fn set_chain_held_max(&self, max: Duration) {
        self.state().chain_held_max = max;
    }

    /// Waiters in each queue, for tests.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> (usize, usize) {
        let state = self.state();
        (state.requests.len(), state.background.len())
    }
}

impl WriterTurn {
    /// Hands the writer, with `chain`, to the next waiter if it may continue
    /// the chain (see [`State::next_joiner`]); the chain back if not, and
    /// this turn is still held.
    pub(crate) fn pass(&mut self, chain: Chain) -> Result<(), Chain> {
        let mut chain = chain;
        let mut state = self.queue.state();
        let now = Instant::now();
        while let Some(next) = state.next_joiner(&chain, now) {
            match next.send(Some(chain)) {
                Ok(()) => {
                    self.passed = true;
                    return Ok(());
                }
                // That waiter was cancelled: the chain comes back.
                Err(returned) => chain = returned.expect("sent as Some"),
            }
        }
        Err(chain)
    }
}

impl Drop for WriterTurn {
    fn drop(&mut self) {
        if !self.passed {
            self.queue.release();
        }
        metrics::histogram!(WRITER_HELD_SECONDS, "priority" => self.priority.as_str())
            .record(self.since.elapsed().as_secs_f64());
    }
}

/// A place in the queue while its owner waits.
struct Waiting {
    queue: WriterQueue,
    receiver: Option<oneshot::Receiver<Handover>>,
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
        match receiver.try_recv() {
            Ok(None) => self.queue.release(),
            // Handed an open chain: nobody else can finish it, so commit what
            // it holds. Never happens in practice: a joining writer's waiting
            // is not cancelled (group commits run on tasks of their own), but
            // the writer must not be lost if it is.
            Ok(Some(mut chain)) => {
                if let Some(mut conn) = chain.conn.take() {
                    let _ = chain.commit(&mut conn);
                }
                self.queue.release();
            }
            Err(_) => {}
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
    async fn an_overdue_background_write_goes_ahead_of_one_request_at_a_time() {
        let queue = WriterQueue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = queue.acquire(WritePriority::Request).await;
        let mut tasks = Vec::new();
        let mut enqueue = |name: &'static str, priority| {
            let (waiter, order) = (queue.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = waiter.acquire(priority).await;
                order.lock().unwrap().push(name);
            }));
            tasks.len()
        };
        for (name, priority) in [
            ("background-1", WritePriority::Background),
            ("background-2", WritePriority::Background),
            ("request-1", WritePriority::Request),
            ("request-2", WritePriority::Request),
        ] {
            let queued = enqueue(name, priority);
            while queue.waiting().0 + queue.waiting().1 < queued {
                tokio::task::yield_now().await;
            }
        }
        // Both background writes have waited their bound.
        std::thread::sleep(DEFAULT_BACKGROUND_WAIT + Duration::from_millis(1));
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["background-1", "request-1", "background-2", "request-2"]
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
