//! `orderflow rebuild GROUP`: throws a stream processor's state away and
//! builds it again by replaying its topics from the beginning of the log.
//!
//! 1. The group's offsets go back to the beginning
//!    ([`EventLog::rewind`](orderflow_core::ports::log::EventLog::rewind)),
//!    refused while the log can tell a member is running. First, so that a
//!    failure leaves the state as it was: a member that then reads from the
//!    beginning finds every event marked processed and skips it.
//!
//!    With a day (`--from DAY`), only back to the events appended since an
//!    hour before that day ([`CLOCK_MARGIN`]); step 2 then drops only the
//!    windows from that day on (and what they added to all-time totals),
//!    and the replay skips events stamped before the day ([`FromDay`]).
//! 2. The state and the group's processed marks are deleted, in one
//!    transaction ([`Store::reset_state`](orderflow_core::ports::store::Store::reset_state)),
//!    and for `trending` with Redis its unique-viewer sketches.
//! 3. A member of the group replays until the group's lag is 0, committing
//!    as it goes like any member: a rebuild cut off half way leaves a
//!    consistent half, which a worker of the group (or another rebuild)
//!    finishes.
//!
//! The rebuilt state equals the live one when the log still holds every
//! event the state was built from: the embedded log keeps events
//! `ORDERFLOW_RETAIN_EVENTS_SECS` (7 days), Kafka topics their
//! `retention.ms`. `fraud` replays with [`FraudHandler::replaying`], which
//! remembers orders and does nothing else (no holds, no alerts, no
//! messages: those happened when the orders were judged).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::{Rebuildable, Since};
use orderflow_domain::events::Envelope;

use crate::error::WorkerError;
use crate::handlers::{FraudHandler, WorkerDeps, topics_of};
use crate::runtime::{Consumer, Handler, Prepared};

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events the replay finished (handled, ignored or skipped).
    pub replayed: u64,
    pub took: Duration,
}

/// How far before the day's start a partial rebuild rewinds the log (by
/// the time events were appended) and drops processed marks: the clocks of
/// the processes that stamped events, appended them and marked them differ
/// by less than this. Events stamped before the day are skipped by the
/// replay ([`FromDay`]), so the margin costs only their reading.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// A replaying handler that skips events stamped before `start`: their
/// effects are in the state a partial reset keeps.
struct FromDay {
    inner: Arc<dyn Handler>,
    start: orderflow_domain::Timestamp,
}

#[async_trait]
impl Handler for FromDay {
    fn group(&self) -> &'static str {
        self.inner.group()
    }

    fn topics(&self) -> &'static [&'static str] {
        self.inner.topics()
    }

    fn lane(&self, envelope: &Envelope) -> String {
        self.inner.lane(envelope)
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        if delivery.envelope.time < self.start {
            return Ok(Prepared::Ignored);
        }
        self.inner.prepare(delivery).await
    }
}

/// How long one replay step waits for events before looking at the lag.
const STEP_WAIT: Duration = Duration::from_millis(200);
/// How often the lag is read while events keep coming: it is a query of
/// every group's offsets (on Kafka, broker round trips per partition), not
/// something to pay per step.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Rebuilds `what` (see the module docs); `force` rewinds even when the log
/// lists members of the group (see `EventLog::rewind`). `progress` hears
/// the events replayed so far and the group's lag, each time the lag is
/// read: about once a second while events come, and when a step finds
/// none (the last call says 0).
pub async fn rebuild(
    deps: &WorkerDeps,
    what: Rebuildable,
    force: bool,
    from_day: Option<chrono::NaiveDate>,
    mut progress: impl FnMut(u64, i64),
) -> Result<RebuildReport, WorkerError> {
    let started = Instant::now();
    let group = what.group();
    let since = from_day.map(|day| Since::day(day, CLOCK_MARGIN));
    deps.log
        .rewind(group, topics_of(group), force, since.map(|s| s.marks_from))
        .await?;
    deps.store.reset_state(what, since).await?;
    if let (Rebuildable::Trending, Some(sketches)) = (what, &deps.sketches) {
        sketches.forget(from_day).await?;
    }
    let mut handler: Arc<dyn Handler> = match what {
        Rebuildable::Analytics | Rebuildable::Trending => deps.handler(group)?,
        Rebuildable::Fraud => Arc::new(FraudHandler::replaying(
            deps.store.clone(),
            deps.fraud.clone(),
        )),
    };
    if let Some(since) = since {
        handler = Arc::new(FromDay {
            inner: handler,
            start: since.start(),
        });
    }
    let mut member =
        Consumer::subscribe(handler, deps.store.clone(), deps.log.as_ref(), deps.retry)
            .await?
            .with_settings(deps.consumer);
    let mut replayed = 0_u64;
    let mut lag_read = Instant::now();
    loop {
        let step = member.process_batch(STEP_WAIT).await?;
        replayed += step.finished() as u64;
        if !step.is_idle() && lag_read.elapsed() < LAG_EVERY {
            continue;
        }
        lag_read = Instant::now();
        let lag: i64 = deps
            .log
            .lag()
            .await?
            .iter()
            .filter(|partition| partition.group == group)
            .map(|partition| partition.lag)
            .sum();
        progress(replayed, lag);
        if step.is_idle() && lag == 0 {
            break;
        }
    }
    Ok(RebuildReport {
        replayed,
        took: started.elapsed(),
    })
}
