//! The consumer runtime: one [`Consumer`] per group member, honouring the
//! consumer contract of DESIGN.md §4 for any [`Handler`].
//!
//! - At-least-once delivery, exactly-once effect: handlers commit their effect
//!   together with `mark_processed(group, event id)`; a redelivery is reported
//!   as [`Handled::Duplicate`] and changes nothing.
//! - Offsets are committed only after every delivery of the batch is durable
//!   (its effect, or its dead letter).
//! - A failing handler is retried with exponential backoff and full jitter
//!   ([`RetryPolicy`]), then dead-lettered: a [`DeadLetter`] row and a
//!   `failed.messages` event, in one transaction. The original event is *not*
//!   marked processed, so a replay can still succeed; the group moves on
//!   because its offset moves past the event.
//! - When the database is down nothing is dead-lettered: the batch stops
//!   without committing and is resumed by the next call.
//! - Each delivery is handled in an `event.handle` span that continues the
//!   event's W3C `traceparent`; metrics are named in [`metric`].
//! - [`Consumer::process_batch`] is the single step tests drive; [`Consumer::run`]
//!   loops it until shut down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_core::ports::log::{Delivery, EventLog, Subscription};
use orderflow_core::ports::store::{DeadLetter, Store};
use orderflow_core::services::effects::RetryPolicy;
use orderflow_domain::events::{Envelope, EventData, TraceParent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::WorkerError;

/// Metric names, exported through the `metrics` facade.
pub mod metric {
    /// Counter `{group, topic, outcome}`; outcome is one of [`super::Handled::as_str`]
    /// or `dead_lettered`.
    pub const EVENTS_CONSUMED: &str = "orderflow_events_consumed_total";
    /// Counter `{group}`: attempts that failed and were tried again.
    pub const RETRIES: &str = "orderflow_consumer_retries_total";
    /// Counter `{group}`: events given up on. (Not `orderflow_dead_letters_total`:
    /// that would clash with the `orderflow_dead_letters` gauge, the DLQ size,
    /// in OpenMetrics, where a counter's family name drops `_total`.)
    pub const DEAD_LETTERS: &str = "orderflow_events_dead_lettered_total";
    /// Histogram `{group}`: time to handle one delivery, retries included.
    pub const HANDLING_SECONDS: &str = "orderflow_event_handling_seconds";
    /// Histogram `{group}`: from the event's `time` to its effect.
    pub const END_TO_END_SECONDS: &str = "orderflow_event_end_to_end_seconds";
    /// Counter `{group}`: facts the order state machine refused (late or duplicate).
    pub const TRANSITIONS_IGNORED: &str = "orderflow_order_transitions_ignored_total";
}

/// How many deliveries one batch takes at most, unless changed with
/// [`Consumer::with_batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 64;
/// How long [`Consumer::run`] waits for new events in one poll. The embedded
/// log wakes up on append, so this bounds idle round trips, not latency.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(1);

/// What a handler did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handled {
    /// The effect (and the events it causes) committed with the processed mark.
    Applied,
    /// The group handled this event before; nothing changed.
    Duplicate,
    /// The group does not care about this kind of event; nothing was written.
    Ignored,
    /// Marked processed, but the order state machine refused the fact (a late
    /// or repeated fact): no effect. Counted in
    /// [`metric::TRANSITIONS_IGNORED`].
    Stale,
}

impl Handled {
    /// The `outcome` label of [`metric::EVENTS_CONSUMED`].
    pub fn as_str(self) -> &'static str {
        match self {
            Handled::Applied => "applied",
            Handled::Duplicate => "duplicate",
            Handled::Ignored => "ignored",
            Handled::Stale => "stale",
        }
    }
}

/// The work of one consumer group.
///
/// `handle` does its provider call(s) first, if any, after a cheap
/// `Store::is_processed` check (so a redelivery does not call the provider
/// again), then in ONE transaction: `mark_processed(group, event id)` (false
/// → drop the transaction, return [`Handled::Duplicate`]), the effect, the
/// events it causes (`append`), commit. Errors are retried by the runtime;
/// the handler never sleeps or dead-letters itself.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The consumer group name, one of [`crate::GROUPS`].
    fn group(&self) -> &'static str;
    /// The topics the group subscribes to.
    fn topics(&self) -> &'static [&'static str];
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, WorkerError>;
}

/// What one call of [`Consumer::process_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Deliveries fetched from the log by this call (0 when it resumed a batch
    /// left unfinished by an earlier error).
    pub polled: usize,
    /// Deliveries whose effect was applied.
    pub handled: usize,
    pub duplicates: usize,
    pub ignored: usize,
    /// Marked processed, refused by the order state machine.
    pub stale: usize,
    pub dead_lettered: usize,
    /// Failed attempts that were tried again.
    pub retries: usize,
}

impl BatchReport {
    /// Deliveries this call finished, whatever the outcome.
    pub fn finished(&self) -> usize {
        self.handled + self.duplicates + self.ignored + self.stale + self.dead_lettered
    }

    /// True when the call found nothing to do.
    pub fn is_idle(&self) -> bool {
        self.polled == 0 && self.finished() == 0
    }

    fn count(&mut self, outcome: Handled) {
        match outcome {
            Handled::Applied => self.handled += 1,
            Handled::Duplicate => self.duplicates += 1,
            Handled::Ignored => self.ignored += 1,
            Handled::Stale => self.stale += 1,
        }
    }
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, other: Self) {
        self.polled += other.polled;
        self.handled += other.handled;
        self.duplicates += other.duplicates;
        self.ignored += other.ignored;
        self.stale += other.stale;
        self.dead_lettered += other.dead_lettered;
        self.retries += other.retries;
    }
}

/// Why handling one delivery stopped without finishing it.
enum Stop {
    /// Shutdown was requested while waiting to retry.
    Shutdown,
    Error(WorkerError),
}

impl From<WorkerError> for Stop {
    fn from(error: WorkerError) -> Self {
        Stop::Error(error)
    }
}

/// One member of a consumer group: a subscription, the group's handler and
/// its retry policy.
///
/// A batch that cannot be finished (the database is down, or committing the
/// offsets failed) stays "in hand" and the next call resumes it where it
/// stopped instead of polling past it: the subscription has already moved its
/// read position beyond the batch, so polling again would skip events.
pub struct Consumer {
    handler: Arc<dyn Handler>,
    store: Arc<dyn Store>,
    subscription: Box<dyn Subscription>,
    retry: RetryPolicy,
    batch_size: usize,
    poll_wait: Duration,
    /// The batch being worked on; empty when the next call must poll.
    in_hand: Vec<Delivery>,
    /// Which deliveries of `in_hand` are finished (handled or dead-lettered).
    done: Vec<bool>,
    /// Set by [`Consumer::run`]; cuts retry waits short on shutdown.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group())
            .field("retry", &self.retry)
            .field("batch_size", &self.batch_size)
            .field("in_hand", &self.done.iter().filter(|d| !**d).count())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Joins the handler's group on its topics.
    pub async fn subscribe(
        handler: Arc<dyn Handler>,
        store: Arc<dyn Store>,
        log: &dyn EventLog,
        retry: RetryPolicy,
    ) -> Result<Self, WorkerError> {
        let subscription = log.subscribe(handler.group(), handler.topics()).await?;
        Ok(Self::new(handler, store, subscription, retry))
    }

    /// A consumer over an existing subscription (which must be for the
    /// handler's group and topics).
    pub fn new(
        handler: Arc<dyn Handler>,
        store: Arc<dyn Store>,
        subscription: Box<dyn Subscription>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            handler,
            store,
            subscription,
            retry,
            batch_size: DEFAULT_BATCH_SIZE,
            poll_wait: DEFAULT_POLL_WAIT,
            in_hand: Vec::new(),
            done: Vec::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// At most `batch_size` deliveries per batch (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The longest wait of one poll in [`Consumer::run`].
    pub fn with_poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    pub fn group(&self) -> &'static str {
        self.handler.group()
    }

    pub fn handler(&self) -> &Arc<dyn Handler> {
        &self.handler
    }

    /// One step: polls up to the batch size (waiting at most `wait` for the
    /// first delivery) unless a batch is still in hand, handles each delivery
    /// in order with retries and dead-lettering, then commits the offsets of
    /// the whole batch.
    ///
    /// On `Err` (the store is down, the log failed) nothing of the unfinished
    /// batch is committed; call again (after a back-off) to resume it.
    pub async fn process_batch(&mut self, wait: Duration) -> Result<BatchReport, WorkerError> {
        let polled = if self.in_hand.is_empty() {
            self.fetch(wait).await?
        } else {
            0
        };
        let mut report = self.finish_in_hand().await?;
        report.polled = polled;
        Ok(report)
    }

    /// Runs until `shutdown` is cancelled: polls (waking up on shutdown),
    /// finishes and commits each batch, logs errors and backs off from them.
    /// A batch in hand when shutdown comes is finished and committed; if a
    /// delivery is waiting to be retried, the part before it is committed and
    /// the rest is left for redelivery.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        let group = self.group();
        // Backs off from a failing database or log: quick at first, then at
        // most every 10 s, with jitter so members do not reconnect in step.
        let backoff = RetryPolicy::new(
            u32::MAX,
            Duration::from_millis(100),
            Duration::from_secs(10),
        );
        let mut failures = 0u32;
        tracing::info!(group, "consumer started");
        while !shutdown.is_cancelled() {
            let step = async {
                if self.in_hand.is_empty() {
                    tokio::select! {
                        biased;
                        // Dropping a poll is safe: the consumer is dropped
                        // right after, and uncommitted events are redelivered.
                        _ = shutdown.cancelled() => return Ok(None),
                        polled = self.fetch(self.poll_wait) => { polled?; }
                    }
                }
                self.finish_in_hand().await.map(Some)
            };
            match step.await {
                Ok(Some(report)) => {
                    failures = 0;
                    if !report.is_idle() {
                        tracing::debug!(group, ?report, "batch done");
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.delay(failures);
                    tracing::error!(group, %error, failures, ?delay, "consumer batch failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(group, "consumer stopped");
    }

    /// Polls a new batch into `in_hand`; returns how many deliveries came.
    async fn fetch(&mut self, wait: Duration) -> Result<usize, WorkerError> {
        let batch = self.subscription.poll(self.batch_size, wait).await?;
        self.done = vec![false; batch.len()];
        self.in_hand = batch;
        Ok(self.in_hand.len())
    }

    /// Handles the rest of `in_hand`, then commits it.
    ///
    /// Deliveries with the same key (the user id) are handled one after the
    /// other in offset order, so one shopper's events keep their order;
    /// different keys are handled concurrently. A group whose handler waits
    /// on a provider (e-mail takes 200 ms) therefore keeps up with the order
    /// rate instead of handling one event at a time.
    async fn finish_in_hand(&mut self) -> Result<BatchReport, WorkerError> {
        let mut lanes: Vec<(String, Vec<usize>)> = Vec::new();
        for (index, delivery) in self.in_hand.iter().enumerate() {
            if self.done[index] {
                continue;
            }
            match lanes
                .iter_mut()
                .find(|(key, _)| *key == delivery.envelope.key)
            {
                Some((_, indexes)) => indexes.push(index),
                None => lanes.push((delivery.envelope.key.clone(), vec![index])),
            }
        }
        let lanes_context = Lanes {
            handler: &self.handler,
            store: &self.store,
            retry: self.retry,
            shutdown: &self.shutdown,
        };
        let (this, in_hand) = (&lanes_context, &self.in_hand);
        let outcomes =
            futures::future::join_all(lanes.into_iter().map(|(_, indexes)| async move {
                let mut report = BatchReport::default();
                let mut finished = Vec::new();
                for index in indexes {
                    match this.finish_one(&in_hand[index], &mut report).await {
                        Ok(()) => finished.push(index),
                        // The rest of this key waits for the next call.
                        Err(stop) => return (report, finished, Some(stop)),
                    }
                }
                (report, finished, None)
            }))
            .await;

        let mut report = BatchReport::default();
        let mut stop = None;
        for (lane_report, finished, lane_stop) in outcomes {
            report += lane_report;
            for index in finished {
                self.done[index] = true;
            }
            match (&stop, lane_stop) {
                (_, Some(Stop::Error(error))) => stop = Some(Stop::Error(error)),
                (None, Some(Stop::Shutdown)) => stop = Some(Stop::Shutdown),
                _ => {}
            }
        }
        match stop {
            Some(Stop::Error(error)) => Err(error),
            Some(Stop::Shutdown) => {
                // Commit, per partition, only the finished prefix; the rest is
                // redelivered at the next start (and skipped where it was done).
                let prefix = self.finished_prefix();
                if !prefix.is_empty() {
                    self.subscription.commit(&prefix).await?;
                }
                self.in_hand.clear();
                self.done.clear();
                Ok(report)
            }
            None => {
                if !self.in_hand.is_empty() {
                    self.subscription.commit(&self.in_hand).await?;
                    self.in_hand.clear();
                    self.done.clear();
                }
                Ok(report)
            }
        }
    }

    /// The deliveries that are finished with every earlier delivery of their
    /// partition finished too (deliveries are in offset order per partition).
    fn finished_prefix(&self) -> Vec<Delivery> {
        let mut blocked: Vec<(&str, i32)> = Vec::new();
        let mut prefix = Vec::new();
        for (delivery, done) in self.in_hand.iter().zip(&self.done) {
            let partition = (delivery.topic.as_str(), delivery.partition);
            if blocked.contains(&partition) {
                continue;
            }
            if *done {
                prefix.push(delivery.clone());
            } else {
                blocked.push(partition);
            }
        }
        prefix
    }
}

/// The span of one delivery's handling (retries and dead-lettering
/// included), a child of the span whose W3C `traceparent` the event carries
/// (the API request that placed the order, for every event the order
/// causes), so one trace shows the order in every group. Without a
/// `traceparent` (older events) it starts its own trace.
fn handling_span(group: &'static str, delivery: &Delivery) -> tracing::Span {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let event = &delivery.envelope;
    let span = tracing::info_span!(
        "event.handle",
        otel.name = format!("{} process {group}", delivery.topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "orderflow",
        messaging.operation.type = "process",
        messaging.consumer.group.name = group,
        messaging.destination.name = %delivery.topic,
        messaging.destination.partition.id = delivery.partition,
        messaging.message.id = %event.id,
        messaging.offset = delivery.offset,
        cloudevents.event_type = event.type_name(),
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = event.traceparent.as_deref().and_then(TraceParent::parse) {
        let remote = SpanContext::new(
            TraceId::from(parent.trace_id),
            SpanId::from(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is installed (export off);
        // the trace id is still recorded for the log lines.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        span.record("trace_id", parent.trace_id_hex());
    }
    span
}

/// What handling one delivery needs, borrowed from the [`Consumer`] so that
/// deliveries of different keys can be handled concurrently (the consumer's
/// subscription is not shared between them).
struct Lanes<'a> {
    handler: &'a Arc<dyn Handler>,
    store: &'a Arc<dyn Store>,
    retry: RetryPolicy,
    shutdown: &'a CancellationToken,
}

impl Lanes<'_> {
    /// Handles one delivery inside its `event.handle` span (see
    /// [`handling_span`]).
    async fn finish_one(&self, delivery: &Delivery, report: &mut BatchReport) -> Result<(), Stop> {
        let span = handling_span(self.handler.group(), delivery);
        self.attempt_all(delivery, report).instrument(span).await
    }

    /// Handles one delivery: attempts with backoff, then a dead letter.
    async fn attempt_all(&self, delivery: &Delivery, report: &mut BatchReport) -> Result<(), Stop> {
        let group = self.handler.group();
        let started = Instant::now();
        let mut attempt = 1;
        let outcome = loop {
            match self.handler.handle(delivery).await {
                Ok(handled) => break Some(handled),
                Err(error) if error.is_store_unavailable() => return Err(error.into()),
                Err(error) if attempt < self.retry.attempts() && error.is_retryable() => {
                    let delay = self.retry.delay(attempt);
                    tracing::warn!(
                        group, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                        event_id = %delivery.envelope.id, attempt, ?delay, %error, "handler failed; retrying"
                    );
                    metrics::counter!(metric::RETRIES, "group" => group).increment(1);
                    report.retries += 1;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                }
                Err(error) => {
                    tracing::error!(
                        group, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                        event_id = %delivery.envelope.id, attempts = attempt, %error, "handler gave up; dead-lettering"
                    );
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    self.dead_letter(delivery, &error, attempt).await?;
                    metrics::counter!(metric::DEAD_LETTERS, "group" => group).increment(1);
                    report.dead_lettered += 1;
                    break None;
                }
            }
        };
        if let Some(handled) = outcome {
            report.count(handled);
        }
        let label = outcome.map_or("dead_lettered", Handled::as_str);
        metrics::counter!(
            metric::EVENTS_CONSUMED,
            "group" => group, "topic" => delivery.topic.clone(), "outcome" => label
        )
        .increment(1);
        metrics::histogram!(metric::HANDLING_SECONDS, "group" => group)
            .record(started.elapsed().as_secs_f64());
        if outcome == Some(Handled::Stale) {
            metrics::counter!(metric::TRANSITIONS_IGNORED, "group" => group).increment(1);
        }
        if matches!(outcome, Some(Handled::Applied | Handled::Stale)) {
            let age = chrono::Utc::now() - delivery.envelope.time;
            let seconds = age.to_std().unwrap_or_default().as_secs_f64();
            metrics::histogram!(metric::END_TO_END_SECONDS, "group" => group).record(seconds);
        }
        Ok(())
    }

    /// Stores the dead letter and its `failed.messages` event in one
    /// transaction. The original event is deliberately not marked processed,
    /// so `orderflow dlq replay` can bring it back to this group.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &WorkerError,
        attempts: u32,
    ) -> Result<(), WorkerError> {
        let group = self.handler.group();
        let dead_letter = DeadLetter {
            id: uuid::Uuid::now_v7(),
            group: group.to_owned(),
            topic: delivery.topic.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
            error: error.to_string(),
            attempts,
            event: delivery.envelope.clone(),
            failed_at: chrono::Utc::now(),
            replayed_at: None,
        };
        let mut failed = Envelope::new(
            EventData::MessageFailed {
                group: group.to_owned(),
                topic: delivery.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
                error: dead_letter.error.clone(),
                attempts,
                original: Box::new(delivery.envelope.clone()),
            },
            delivery.envelope.traceparent.clone(),
        );
        // One id for the record and its event, so either finds the other.
        failed.id = dead_letter.id;
        let mut tx = self.store.begin().await?;
        tx.insert_dead_letter(&dead_letter).await?;
        tx.append(&[failed]).await?;
        tx.commit().await?;
        Ok(())
    }
}
