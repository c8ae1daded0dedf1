//! The deadline for a request's line and headers (HTTP/1, slow-loris), one
//! alarm per connection instead of one timer per request.
//!
//! hyper asks its timer for a new sleep at the start of every request head
//! and drops it once the head is read. With tokio's timer
//! (`hyper_util::rt::TokioTimer`) that is a sleep registered in the
//! runtime's timer wheel and taken out again, under the wheel's lock, for
//! every request on a keep-alive connection (the head is awaited, so the
//! sleep is polled, then dropped): 3% of a product read's CPU.
//!
//! Here each connection keeps one tokio sleep, its alarm, armed for the
//! earliest deadline it was asked for. A request's [`HeaderDeadline`] only
//! notes its deadline: while the alarm is set for no later, polling it
//! registers nothing new. When the alarm rings for a deadline that is gone
//! (its head was read), the head being read now re-arms it for its own:
//! a busy connection wakes once per time-out period for nothing, and the
//! wheel is touched once per period, not per request. A head not read by
//! its deadline is refused exactly as with tokio's timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// hyper's timer for one connection (`http1().timer(...)` on the builder
/// that serves it): hands out [`HeaderDeadline`]s that share its alarm.
#[derive(Clone)]
pub struct ConnectionTimer {
    alarm: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnectionTimer {
    /// A timer with its alarm unset. Inside a tokio runtime with time.
    pub fn new() -> Self {
        Self {
            alarm: Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(
                tokio::time::Instant::now() + UNSET,
            )))),
        }
    }
}

impl Default for ConnectionTimer {
    fn default() -> Self {
        Self::new()
    }
}

/// Where an alarm nobody asked for yet rings: never, in practice.
const UNSET: Duration = Duration::from_secs(60 * 60 * 24 * 365);

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderDeadline {
            deadline: deadline.into(),
            alarm: self.alarm.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeaderDeadline>() {
            Some(mut sleep) => sleep.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    /// tokio's clock, so tests with paused time drive the deadline too.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into()
    }
}

/// One request head's deadline on its connection's alarm.
pub struct HeaderDeadline {
    deadline: tokio::time::Instant,
    alarm: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl Future for HeaderDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // One task serves the connection: the lock is never contended.
        let mut alarm = self
            .alarm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if alarm.deadline() > deadline {
            alarm.as_mut().reset(deadline);
        }
        if alarm.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // It rang: for this deadline, or for an earlier one whose head was
        // read in time.
        if tokio::time::Instant::now() >= deadline {
            return Poll::Ready(());
        }
        alarm.as_mut().reset(deadline);
        alarm.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeaderDeadline {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::rt::Timer as _;

    use super::ConnectionTimer;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Whether `sleep` has rung by now, polled once.
    fn rang(sleep: &mut std::pin::Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_read_in_time_rings_at_its_deadline() {
        let timer = ConnectionTimer::new();
        let mut head = timer.sleep(LIMIT);
        assert!(!rang(&mut head));
        tokio::time::advance(LIMIT - Duration::from_millis(5)).await;
        assert!(!rang(&mut head));
        // Awaited as hyper does: the alarm wakes the task at the deadline.
        tokio::time::timeout(Duration::from_millis(10), head)
            .await
            .expect("the deadline rings within its millisecond");
    }

    /// Heads read in time leave the alarm set for a deadline that is gone;
    /// the head after them is refused at its own deadline, not theirs.
    #[tokio::test(start_paused = true)]
    async fn a_later_head_rings_at_its_own_deadline_not_an_earlier_ones() {
        let timer = ConnectionTimer::new();
        let mut first = timer.sleep(LIMIT);
        assert!(!rang(&mut first));
        drop(first);
        tokio::time::advance(Duration::from_secs(4)).await;
        let mut second = timer.sleep(LIMIT);
        assert!(!rang(&mut second));
        // The first's deadline passes: the second is still in time.
        tokio::time::advance(LIMIT - Duration::from_secs(2)).await;
        assert!(!rang(&mut second));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(rang(&mut second));
    }

    /// hyper resets a sleep it keeps, for the next head.
    #[tokio::test(start_paused = true)]
    async fn a_reset_deadline_is_the_one_that_counts() {
        let timer = ConnectionTimer::new();
        let mut head = timer.sleep(LIMIT);
        assert!(!rang(&mut head));
        timer.reset(&mut head, timer.now() + 2 * LIMIT);
        tokio::time::advance(LIMIT + Duration::from_secs(1)).await;
        assert!(!rang(&mut head));
        tokio::time::advance(LIMIT).await;
        assert!(rang(&mut head));
    }
}
