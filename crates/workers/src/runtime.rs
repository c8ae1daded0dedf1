//! The consumer runtime: one [`Consumer`] per group member, honouring the
//! consumer contract of DESIGN.md §4 for any [`Handler`].
//!
//! A delivery goes through two steps:
//! 1. **prepare** ([`Handler::prepare`]): reads and provider calls (the
//!    e-mail is sent, the card charged), no writes. It runs concurrently
//!    with the preparation of other keys' deliveries.
//! 2. **apply** ([`Effect::apply`]): the writes, inside a *group commit*:
//!    the finished deliveries of the group are written together, one
//!    transaction per flush, each effect inside its own savepoint together
//!    with its `mark_processed(group, event id)` and the events it causes.
//!    An effect that fails is rolled back to its savepoint alone and retried;
//!    its neighbours commit. (A flush is first tried without savepoints,
//!    which cost a round trip each; only when an effect fails is it rolled
//!    back unseen and written again with them.) After the commit, [`Effect::committed`] mirrors
//!    read models.
//!
//! How deliveries flow (the scheme of Confluent's parallel-consumer):
//! - **A window, not a batch.** A member keeps up to
//!   [`ConsumerSettings::window`] deliveries in hand and polls more as soon as
//!   there is room, so a group whose provider takes 300 ms has hundreds of
//!   calls in flight instead of one batch's worth.
//! - **Per-lane order.** Deliveries of one lane ([`Handler::lane`]: the
//!   event's key, the shopper, unless the group names a narrower one) are
//!   prepared one after the other in offset order, and their effects are
//!   applied in that order: a lane's next delivery starts only when nothing
//!   earlier of its lane is being prepared or waiting to be retried, and a
//!   flush takes, per lane, only a prefix of prepared effects. A lane in
//!   retry back-off holds back only that lane.
//! - **Offsets** advance per partition to the highest *contiguous* finished
//!   delivery, committed at most every [`ConsumerSettings::commit_interval`]
//!   (and whenever the member runs dry or stops). A crash redelivers what was
//!   not committed; the processed marks make that harmless.
//! - **One flush at a time**, bounded by [`ConsumerSettings::group_commit_max`]
//!   effects. While one flush writes, the next one fills up, so flushes grow
//!   with the load (group commit) and stay single-delivery when it is quiet.
//!   On SQLite the flush is a background writer: requests go first (see the
//!   SQLite adapter); nothing holds the transaction while waiting on a
//!   provider.
//!
//! Failures:
//! - A failing delivery is retried with exponential backoff and full jitter
//!   ([`RetryPolicy`]), then dead-lettered: a [`DeadLetter`] row and a
//!   `failed.messages` event, written in the group commit like an effect.
//!   The original event is *not* marked processed, so a replay can still
//!   succeed; the group moves on because its offset moves past the event.
//! - When the database is down nothing is dead-lettered: the affected
//!   deliveries wait (backing off) with their prepared effects and are
//!   written when it is back; offsets do not move past them.
//! - When a provider's circuit breaker is open, the deliveries that need it
//!   wait until it may close (a little longer, spread, so they do not all
//!   probe at once) without spending an attempt; other lanes, and other
//!   groups, go on; offsets do not move past the waiting ones.
//! - Each delivery is handled in an `event.handle` span that continues the
//!   event's W3C `traceparent`; its writes run in an `event.apply` child
//!   span. Metrics are named in [`metric`].
//!
//! [`Consumer::process_batch`] is the single step tests drive (poll once,
//! finish everything in hand, commit); [`Consumer::run`] is the pipelined
//! loop, until shut down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt as _};
use orderflow_core::ports::log::{Delivery, EventLog, LogResult, Subscription};
use orderflow_core::ports::store::{DeadLetter, Store, StoreTx};
use orderflow_core::services::effects::RetryPolicy;
use orderflow_core::wait::or_never;
use orderflow_domain::EventId;
use orderflow_domain::events::{Envelope, EventData, TraceParent};
use tokio::time::Instant;
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
    /// Histogram `{group}`: time to handle one delivery, from its first
    /// attempt to its group commit, retries included.
    pub const HANDLING_SECONDS: &str = "orderflow_event_handling_seconds";
    /// Histogram `{group}`: from the event's `time` to its effect.
    pub const END_TO_END_SECONDS: &str = "orderflow_event_end_to_end_seconds";
    /// Counter `{group}`: facts the order state machine refused (late or duplicate).
    pub const TRANSITIONS_IGNORED: &str = "orderflow_order_transitions_ignored_total";
    /// Counter `{group}`: group commits (transactions that wrote effects).
    pub const GROUP_COMMITS: &str = "orderflow_group_commits_total";
    /// Counter `{group}`: effects (and dead letters) written by group
    /// commits; divided by [`GROUP_COMMITS`] it is the mean flush size.
    pub const GROUP_COMMIT_EFFECTS: &str = "orderflow_group_commit_effects_total";
    /// Counter `{group}`: attempts parked because the provider's circuit
    /// breaker was open (not counted as attempts, never dead-lettered).
    pub const BREAKER_WAITS: &str = "orderflow_consumer_breaker_waits_total";
    /// Gauge `{group}`: deliveries a member holds (polled, not yet committed).
    pub const IN_FLIGHT: &str = "orderflow_consumer_in_flight";
}

/// How a group member paces itself. The defaults suit the simulated
/// providers' latencies (see [`DEFAULT_WINDOW`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Deliveries held at most (polled and not yet committed).
    pub window: usize,
    /// Effects written by one group commit at most. Bounds how long one
    /// flush holds SQLite's writer, which a request may be waiting for; the
    /// busiest group's throughput is at most this many effects per flush
    /// (see [`DEFAULT_GROUP_COMMIT_MAX`]).
    pub group_commit_max: usize,
    /// Offsets are committed at most this often while work goes on.
    pub commit_interval: Duration,
    /// How long one poll waits for new events. The embedded logs wake up on
    /// append, so this bounds idle round trips, not latency.
    pub poll_wait: Duration,
    /// `run` starts a group commit only at the points of a grid of this
    /// interval, shared by every member in the process; zero: as soon as a
    /// delivery is prepared (see [`DEFAULT_GROUP_COMMIT_INTERVAL`]).
    pub group_commit_interval: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            group_commit_max: DEFAULT_GROUP_COMMIT_MAX,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            poll_wait: DEFAULT_POLL_WAIT,
            group_commit_interval: DEFAULT_GROUP_COMMIT_INTERVAL,
        }
    }
}

/// See [`ConsumerSettings::window`]. A delivery stays in hand until its
/// partition's offset is committed past it, so everything polled behind a
/// slow one stays too: the window must hold every event of the group's
/// topics that arrives during the slowest provider call (SMS, 300 ms), and
/// during a retry's back-off. With 1,024, the SMS group (every order event,
/// about two per order) filled its window at about 1,600 orders/s and fell
/// seconds behind; with 4,096 it kept up (docs/benchmarks.md). Each held
/// delivery is one decoded event, about a kilobyte.
pub const DEFAULT_WINDOW: usize = 4096;
/// See [`ConsumerSettings::group_commit_max`]. A group flushes once per
/// turn at SQLite's writer, and under a steady stream of requests a turn
/// comes about every background wait (SQLite's, 10 ms by default), so a group can write at
/// most this many effects per such interval. With 64 the `orders` group,
/// which takes two events per order (stock and payment), wrote 56 per flush
/// on average in the default bench, held each delivery 460 ms and put
/// confirmation 2 s behind; with 256 it wrote 47 per flush, when it wanted
/// to, and confirmation kept up (docs/benchmarks.md, "The group commit's
/// cap"). A flush of 256 of the store's effects holds the writer a few
/// milliseconds.
pub const DEFAULT_GROUP_COMMIT_MAX: usize = 256;
/// See [`ConsumerSettings::group_commit_interval`]. A group commit costs
/// about the same whether it writes one effect or twenty (a transaction,
/// the processed marks' statement, the pages its `COMMIT` writes), and
/// without an interval a group flushed whatever was prepared the moment its
/// last flush ended: under a moderate, steady load that was three to five
/// effects per flush, 2.7 to 5.6 group commits per order across the groups
/// (measured at 600 orders/s, open loop).
/// On a grid, deliveries prepared within one interval share a flush, and
/// the groups of a process flush at the same moments, so on SQLite their
/// transactions queue for the writer together and commit as one chain. At
/// 600 orders/s (open loop, SQLite) 4 ms cut the writer's background time per
/// order from 1.04–1.06 to 0.74–0.75 ms and the order request's p99 from
/// 54–56 to 41–42 ms; each hop waits 2 ms more on average, and accepted →
/// confirmed still came out lower (docs/benchmarks.md, "Group commits on a
/// grid"). Under a saturating load (the default bench) flushes are large
/// anyway and the interval changes nothing measurable.
pub const DEFAULT_GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(4);
/// See [`ConsumerSettings::commit_interval`].
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// See [`ConsumerSettings::poll_wait`].
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(1);
/// Deliveries asked for by one poll at most, so a member with a large window
/// starts on the first events before it has read hundreds more.
const POLL_MAX: usize = 256;

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

/// What [`Handler::prepare`] found.
pub enum Prepared {
    /// The group does not care about this kind of event; nothing is written
    /// (not even a processed mark).
    Ignored,
    /// The group handled this event before (a cheap pre-check found its
    /// mark); nothing is written.
    Duplicate,
    /// Writes for the group commit.
    Effect(Box<dyn Effect>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prepared::Ignored => "Ignored",
            Prepared::Duplicate => "Duplicate",
            Prepared::Effect(_) => "Effect",
        })
    }
}

/// What an [`Effect`] did inside the group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect was written.
    Changed,
    /// Marked processed, nothing else: the order state machine refused the
    /// fact ([`Handled::Stale`]).
    Stale,
}

/// The writes of one delivery, made inside a group commit.
#[async_trait]
pub trait Effect: Send + 'static {
    /// Writes through `tx` only, after the runtime marked the event processed
    /// in the same savepoint. May run more than once: a flush that fails as
    /// a whole (the database went away) is written again later.
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError>;

    /// After the group commit: mirror read models, count metrics. Never
    /// fails (the database holds the effect already).
    async fn committed(self: Box<Self>) {}
}

/// The work of one consumer group.
///
/// `prepare` does the reads and provider calls an event needs and returns
/// the writes as an [`Effect`]; a group whose `prepare` calls a provider
/// says so ([`Handler::skips_processed`]), and the runtime does not prepare
/// an event the group already handled (a redelivery after a crash). It never writes and never holds a transaction. Errors are
/// retried by the runtime; the handler never sleeps or dead-letters itself.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The consumer group name, one of [`crate::GROUPS`].
    fn group(&self) -> &'static str;
    /// The topics the group subscribes to: by default its row of
    /// [`crate::GROUP_TOPICS`].
    fn topics(&self) -> &'static [&'static str] {
        crate::topics_of(self.group())
    }
    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError>;
    /// The lane `envelope` waits in: deliveries of one lane are handled one
    /// after the other in offset order, lanes side by side. By default the
    /// event's key (the shopper), the order the log keeps. A group whose
    /// effects only need a narrower order names a narrower lane (the
    /// notification groups: one order's messages), so one busy shopper's
    /// slow provider calls do not queue behind each other.
    fn lane(&self, envelope: &Envelope) -> String {
        envelope.key.clone()
    }
    /// `true` for a group whose `prepare` calls a provider: the runtime
    /// looks up the processed marks of each polled batch (one query) and
    /// finishes an event whose mark exists as a duplicate without preparing
    /// it, so a redelivery does not call the provider again. (The group
    /// commit's mark is what keeps effects exactly-once either way; this
    /// saves the call.)
    fn skips_processed(&self) -> bool {
        false
    }
}

/// A delivery's processed mark as looked up before its prepare (see
/// [`Handler::skips_processed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// The handler does not ask.
    NotAsked,
    Found,
    NotFound,
    /// The batch's lookup failed: looked up alone before the prepare.
    Unknown,
}

/// A poll's deliveries and, for a group that asks, which of them it
/// handled already (`None`: the lookup failed).
struct Polled {
    deliveries: Vec<Delivery>,
    processed: Option<HashSet<EventId>>,
}

/// Looks up the processed marks of `deliveries` in one query, for a group
/// that asks ([`Handler::skips_processed`]).
async fn look_up_marks(
    store: &dyn Store,
    handler: &dyn Handler,
    deliveries: &[Delivery],
) -> Option<HashSet<EventId>> {
    if !handler.skips_processed() || deliveries.is_empty() {
        return Some(HashSet::new());
    }
    let ids: Vec<EventId> = deliveries.iter().map(|d| d.envelope.id).collect();
    match store.processed_among(handler.group(), &ids).await {
        Ok(found) => Some(found),
        Err(error) => {
            tracing::warn!(group = handler.group(), %error, "looking up processed marks failed; each delivery looks alone");
            None
        }
    }
}

/// What one call of [`Consumer::process_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Deliveries fetched from the log by this call (0 when it resumed
    /// deliveries left unfinished by an earlier error).
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
    /// Transactions that wrote the effects (one per group commit).
    pub group_commits: usize,
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

    fn count(&mut self, outcome: Finished) {
        match outcome {
            Finished::Handled(Handled::Applied) => self.handled += 1,
            Finished::Handled(Handled::Duplicate) => self.duplicates += 1,
            Finished::Handled(Handled::Ignored) => self.ignored += 1,
            Finished::Handled(Handled::Stale) => self.stale += 1,
            Finished::DeadLettered => self.dead_lettered += 1,
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
        self.group_commits += other.group_commits;
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Handled(Handled),
    DeadLettered,
}

/// What goes into a group commit for one delivery.
enum Work {
    /// Marked processed, then the effect.
    Effect(Box<dyn Effect>),
    /// Given up on: the dead letter and its `failed.messages` event.
    DeadLetter { error: String, attempts: u32 },
}

/// Where one delivery is.
enum State {
    /// Not started, or back from a failed attempt; `delay` is the back-off
    /// to sleep before the next attempt.
    Waiting { delay: Option<Duration> },
    /// `prepare` (or its back-off) is running.
    Preparing,
    /// Waiting for a group commit.
    Prepared(Work),
    /// In the group commit that is running.
    Flushing,
    /// Finished; waiting for its offset to be committed.
    Done,
}

/// One delivery in hand.
struct Slot {
    delivery: Arc<Delivery>,
    /// [`Handler::lane`] of the delivery.
    lane: Arc<str>,
    /// `event.handle`, open from the first attempt to the group commit.
    span: tracing::Span,
    started: Instant,
    /// Failed attempts so far.
    failures: u32,
    state: State,
    mark: Mark,
}

/// How a prepare future ended.
enum PrepareResult {
    Prepared(Result<Prepared, WorkerError>),
    /// Shutdown came during the back-off wait; nothing was attempted.
    Cancelled,
}

/// How one delivery of a group commit ended.
enum FlushOutcome {
    Finished(Finished),
    /// Its effect failed and was rolled back to its savepoint.
    Failed(WorkerError),
    /// Not written (the flush failed as a whole, or an earlier effect of the
    /// same lane failed): the prepared work comes back.
    Returned(Work),
}

/// What a group commit hands back: an outcome per delivery, and the error
/// that made the whole flush fail, if one did.
struct FlushDone {
    outcomes: Vec<(u64, FlushOutcome)>,
    error: Option<WorkerError>,
}

/// One delivery taken into a group commit.
struct FlushItem {
    seq: u64,
    delivery: Arc<Delivery>,
    lane: Arc<str>,
    span: tracing::Span,
    work: Work,
}

/// One member of a consumer group: a subscription, the group's handler, its
/// retry policy and the deliveries in hand (see the module docs).
///
/// Deliveries that cannot be finished (the database is down, committing the
/// offsets failed) stay in hand and are resumed, never skipped: the
/// subscription has already moved its read position beyond them.
pub struct Consumer {
    handler: Arc<dyn Handler>,
    store: Arc<dyn Store>,
    /// `None` while a poll of [`Consumer::run`] has it (see [`Polling`]).
    subscription: Option<Box<dyn Subscription>>,
    /// The poll in flight in [`Consumer::run`].
    polling: Option<Polling>,
    retry: RetryPolicy,
    settings: ConsumerSettings,
    /// Deliveries in hand, by the sequence number they got when polled.
    slots: HashMap<u64, Slot>,
    next_seq: u64,
    /// Per lane ([`Handler::lane`]), the unfinished deliveries in offset order.
    lanes: HashMap<Arc<str>, VecDeque<u64>>,
    /// Lanes that changed since the last look for work to start.
    dirty: Vec<Arc<str>>,
    /// Per partition, the deliveries in hand in offset order (offsets are
    /// committed up to the first one not done).
    partitions: HashMap<(String, i32), VecDeque<u64>>,
    /// Running prepares, each on its own task.
    preparing: FuturesUnordered<BoxFuture<'static, (u64, PrepareResult)>>,
    /// The running group commit, on its own task: it holds a transaction
    /// (on SQLite, the writer), so it must make progress whatever this loop
    /// is waiting for (an offset commit waits for that same writer).
    flushing: Option<BoxFuture<'static, Result<FlushDone, tokio::task::JoinError>>>,
    /// Consecutive failures of the database or the log (flushes, polls,
    /// commits, store outages in handlers): the back-off grows with them.
    outages: u32,
    /// No flush starts before this (back-off after a failed flush).
    flush_after: Option<Instant>,
    /// The grid point the next group commit of `run` waits for, once a
    /// delivery is prepared ([`ConsumerSettings::group_commit_interval`]).
    group_commit_at: Option<Instant>,
    /// No poll starts before this (back-off after a failed poll).
    poll_after: Option<Instant>,
    last_commit: Instant,
    /// Finished deliveries whose offsets are not committed yet.
    done_uncommitted: usize,
    /// The database outage that stops the current [`Consumer::process_batch`].
    stop: Option<WorkerError>,
    report: BatchReport,
    /// Set by [`Consumer::run`]; cuts back-off waits short on shutdown.
    shutdown: CancellationToken,
    /// Made at the first use ([`GroupMetrics::of`]).
    metrics: Option<GroupMetrics>,
}

/// The metric handles of one member, made once: the `metrics` macros hash
/// their key and look it up in the registry at every call, and this loop
/// counted several times per delivery and once per turn. Made at the first
/// use, not in [`Consumer::new`], so that the binary has installed its
/// recorder by then (a handle made before stays a no-op).
struct GroupMetrics {
    in_flight: metrics::Gauge,
    handling: metrics::Histogram,
    end_to_end: metrics::Histogram,
    transitions_ignored: metrics::Counter,
    dead_letters: metrics::Counter,
    flush: FlushMetrics,
    /// `orderflow_events_consumed_total` per (topic, outcome): a handful.
    consumed: Vec<(String, &'static str, metrics::Counter)>,
}

/// What a group commit counts, handed to its task.
#[derive(Clone)]
struct FlushMetrics {
    commits: metrics::Counter,
    effects: metrics::Counter,
}

impl GroupMetrics {
    /// The member's handles, made now if this is the first use.
    fn of<'a>(made: &'a mut Option<Self>, group: &'static str) -> &'a mut Self {
        made.get_or_insert_with(|| Self {
            in_flight: metrics::gauge!(metric::IN_FLIGHT, "group" => group),
            handling: metrics::histogram!(metric::HANDLING_SECONDS, "group" => group),
            end_to_end: metrics::histogram!(metric::END_TO_END_SECONDS, "group" => group),
            transitions_ignored: metrics::counter!(metric::TRANSITIONS_IGNORED, "group" => group),
            dead_letters: metrics::counter!(metric::DEAD_LETTERS, "group" => group),
            flush: FlushMetrics {
                commits: metrics::counter!(metric::GROUP_COMMITS, "group" => group),
                effects: metrics::counter!(metric::GROUP_COMMIT_EFFECTS, "group" => group),
            },
            consumed: Vec::new(),
        })
    }

    /// `orderflow_events_consumed_total{group, topic, outcome}`.
    fn consumed(
        &mut self,
        group: &'static str,
        topic: &str,
        outcome: &'static str,
    ) -> &metrics::Counter {
        let index = match self
            .consumed
            .iter()
            .position(|(t, o, _)| t == topic && *o == outcome)
        {
            Some(index) => index,
            None => {
                let counter = metrics::counter!(
                    metric::EVENTS_CONSUMED,
                    "group" => group, "topic" => topic.to_owned(), "outcome" => outcome
                );
                self.consumed.push((topic.to_owned(), outcome, counter));
                self.consumed.len() - 1
            }
        };
        &self.consumed[index].2
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group())
            .field("retry", &self.retry)
            .field("settings", &self.settings)
            .field("in_hand", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Backs off from a failing database or log: quick at first, then at most
/// every 10 s, with jitter so members do not reconnect in step.
const OUTAGE_BACKOFF: RetryPolicy = RetryPolicy::new(
    u32::MAX,
    Duration::from_millis(100),
    Duration::from_secs(10),
);

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
            subscription: Some(subscription),
            polling: None,
            retry,
            settings: ConsumerSettings::default(),
            slots: HashMap::new(),
            next_seq: 0,
            lanes: HashMap::new(),
            dirty: Vec::new(),
            partitions: HashMap::new(),
            preparing: FuturesUnordered::new(),
            flushing: None,
            outages: 0,
            flush_after: None,
            group_commit_at: None,
            poll_after: None,
            last_commit: Instant::now(),
            done_uncommitted: 0,
            stop: None,
            report: BatchReport::default(),
            shutdown: CancellationToken::new(),
            metrics: None,
        }
    }

    /// Paces the member with `settings` (window and group commit at least 1).
    pub fn with_settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = ConsumerSettings {
            window: settings.window.max(1),
            group_commit_max: settings.group_commit_max.max(1),
            ..settings
        };
        self
    }

    pub fn group(&self) -> &'static str {
        self.handler.group()
    }

    pub fn handler(&self) -> &Arc<dyn Handler> {
        &self.handler
    }

    /// One step: polls up to the window (waiting at most `wait` for the
    /// first delivery) unless deliveries are still in hand, finishes every
    /// delivery in hand (prepare with retries and dead-lettering, group
    /// commits), then commits the offsets.
    ///
    /// On `Err` (the store is down, the log failed) the unfinished deliveries
    /// stay in hand and nothing more is committed; call again (after a
    /// back-off) to resume them.
    pub async fn process_batch(&mut self, wait: Duration) -> Result<BatchReport, WorkerError> {
        self.report = BatchReport::default();
        self.stop = None;
        self.flush_after = None;
        if self.slots.is_empty() {
            let subscription = self
                .subscription
                .as_mut()
                .expect("process_batch never leaves a poll in flight");
            let deliveries = subscription.poll(self.settings.window, wait).await?;
            self.report.polled = deliveries.len();
            let processed =
                look_up_marks(self.store.as_ref(), self.handler.as_ref(), &deliveries).await;
            self.admit(Polled {
                deliveries,
                processed,
            });
        }
        loop {
            if self.stop.is_none() {
                self.start_prepares();
                self.start_flush();
            }
            if self.preparing.is_empty() && self.flushing.is_none() {
                break;
            }
            let completion = next_completion(&mut self.preparing, &mut self.flushing).await;
            self.take_in(completion);
        }
        if let Some(error) = self.stop.take() {
            return Err(error);
        }
        self.commit_offsets().await?;
        Ok(std::mem::take(&mut self.report))
    }

    /// Runs until `shutdown` is cancelled: polls while there is room in the
    /// window, prepares, group-commits and commits offsets as work finishes,
    /// and backs off from outages. On shutdown it stops polling and starting
    /// deliveries, lets running provider calls finish (back-off waits are cut
    /// short), writes what is prepared and commits the offsets; deliveries
    /// left unfinished are redelivered at the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        let group = self.group();
        tracing::info!(group, settings = ?self.settings, "consumer started");
        let mut stopping = false;
        loop {
            if !stopping {
                self.start_prepares();
            }
            if self.group_commit_due(stopping) {
                self.start_flush();
            }
            let quiet = self.preparing.is_empty() && self.flushing.is_none();
            let commit_due = self.last_commit.elapsed() >= self.settings.commit_interval;
            if quiet || commit_due {
                self.commit_offsets_logged().await;
            }
            // Offsets are due but a poll has the subscription: let it come
            // back (it waits at most a commit interval) before the next one,
            // or a busy member would never find the subscription at home.
            let commit_waits = self.done_uncommitted > 0
                && self.last_commit.elapsed() >= self.settings.commit_interval;
            let backing_off = self.flush_after.is_some_and(|at| at > Instant::now());
            if stopping && quiet && self.polling.is_none() && (!self.flushable() || backing_off) {
                break;
            }
            let in_hand = self.slots.len() as f64;
            GroupMetrics::of(&mut self.metrics, group)
                .in_flight
                .set(in_hand);
            let room = self.settings.window.saturating_sub(self.slots.len());
            if !stopping
                && room > 0
                && !commit_waits
                && self.poll_after.is_none_or(|at| at <= Instant::now())
                && let Some(subscription) = self.subscription.take()
            {
                // Offsets to commit soon: come back by then even if no event comes.
                let wait = if self.done_uncommitted > 0 || !quiet {
                    self.settings.commit_interval
                } else {
                    self.settings.poll_wait
                };
                self.polling = Some(poll(
                    subscription,
                    (self.store.clone(), self.handler.clone()),
                    room.min(POLL_MAX),
                    wait,
                    shutdown.clone(),
                ));
            }
            let timer = self.next_timer(quiet);
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => stopping = true,
                completion = next_completion(&mut self.preparing, &mut self.flushing), if !quiet => {
                    self.take_in(completion);
                }
                (subscription, polled) = or_never(self.polling.as_mut()), if self.polling.is_some() => {
                    self.polling = None;
                    self.subscription = Some(subscription);
                    match polled {
                        Ok(batch) => {
                            self.poll_after = None;
                            self.admit(batch);
                        }
                        Err(error) => {
                            self.outages = self.outages.saturating_add(1);
                            let delay = OUTAGE_BACKOFF.delay(self.outages);
                            tracing::error!(group, %error, ?delay, "polling the log failed; backing off");
                            self.poll_after = Some(Instant::now() + delay);
                        }
                    }
                }
                () = or_never(timer.map(tokio::time::sleep_until)) => {}
            }
        }
        self.commit_offsets_logged().await;
        tracing::info!(group, left = self.slots.len(), "consumer stopped");
    }

    /// The next moment the loop must look again without any completion: a
    /// back-off ending, or offsets to commit.
    fn next_timer(&self, quiet: bool) -> Option<Instant> {
        // While a poll has the subscription, its return is what wakes the
        // loop for the commit.
        let commit = (!quiet && self.done_uncommitted > 0 && self.subscription.is_some())
            .then(|| self.last_commit + self.settings.commit_interval);
        [
            self.flush_after,
            self.poll_after,
            commit,
            self.group_commit_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes polled deliveries into hand.
    fn admit(&mut self, polled: Polled) {
        let asks = self.handler.skips_processed();
        for delivery in polled.deliveries {
            let mark = match &polled.processed {
                _ if !asks => Mark::NotAsked,
                Some(found) if found.contains(&delivery.envelope.id) => Mark::Found,
                Some(_) => Mark::NotFound,
                None => Mark::Unknown,
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let lane: Arc<str> = self.handler.lane(&delivery.envelope).into();
            self.partitions
                .entry((delivery.topic.clone(), delivery.partition))
                .or_default()
                .push_back(seq);
            self.lanes.entry(lane.clone()).or_default().push_back(seq);
            self.dirty.push(lane.clone());
            let span = handling_span(self.handler.group(), &delivery);
            self.slots.insert(
                seq,
                Slot {
                    delivery: Arc::new(delivery),
                    lane,
                    span,
                    started: Instant::now(),
                    failures: 0,
                    state: State::Waiting { delay: None },
                    mark,
                },
            );
        }
    }

    /// Starts preparing, for every lane that changed, its first delivery not
    /// yet prepared, unless one of its deliveries is being prepared already.
    fn start_prepares(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for name in dirty {
            let Some(lane) = self.lanes.get(&name) else {
                continue;
            };
            for seq in lane {
                let slot = self.slots.get_mut(seq).expect("lanes hold slots in hand");
                match &slot.state {
                    State::Prepared(_) | State::Flushing | State::Done => continue,
                    State::Preparing => break,
                    State::Waiting { delay } => {
                        let delay = *delay;
                        slot.state = State::Preparing;
                        let future = prepare(
                            *seq,
                            (self.handler.clone(), self.store.clone()),
                            (slot.delivery.clone(), slot.mark),
                            slot.span.clone(),
                            delay,
                            self.shutdown.clone(),
                        );
                        self.preparing.push(future);
                        break;
                    }
                }
            }
        }
    }

    /// Whether `run` may start a group commit now: at once without a
    /// [`ConsumerSettings::group_commit_interval`] or when stopping, else
    /// at the first grid point after a delivery is ready to flush (the
    /// loop's timer wakes it then).
    fn group_commit_due(&mut self, stopping: bool) -> bool {
        let interval = self.settings.group_commit_interval;
        if interval.is_zero() || stopping {
            return true;
        }
        let now = Instant::now();
        match self.group_commit_at {
            Some(at) if at > now => false,
            Some(_) => {
                self.group_commit_at = None;
                true
            }
            None => {
                if self.flushing.is_none() && self.flushable() {
                    self.group_commit_at = Some(now + until_grid_point(interval));
                }
                false
            }
        }
    }

    /// Whether a flush could take a prepared delivery now (what
    /// [`Self::flush_candidates`] would find, without collecting them: this
    /// is asked on every turn of the loop).
    fn flushable(&self) -> bool {
        self.lanes
            .values()
            .any(|lane| self.prepared_prefix(lane).next().is_some())
    }

    /// Per lane, the prefix that is prepared, in polling order.
    fn flush_candidates(&self) -> Vec<u64> {
        let mut candidates: Vec<u64> = self
            .lanes
            .values()
            .flat_map(|lane| self.prepared_prefix(lane))
            .collect();
        candidates.sort_unstable();
        candidates
    }

    /// The prepared deliveries of `lane` that a flush may take: those before
    /// its first delivery that is neither prepared nor done.
    fn prepared_prefix<'a>(&'a self, lane: &'a VecDeque<u64>) -> impl Iterator<Item = u64> + 'a {
        lane.iter()
            .map(|seq| (*seq, &self.slots[seq].state))
            .filter(|(_, state)| !matches!(state, State::Done))
            .take_while(|(_, state)| matches!(state, State::Prepared(_)))
            .map(|(seq, _)| seq)
    }

    /// Starts a group commit of the prepared deliveries, unless one is
    /// running or the last one failed less than a back-off ago.
    fn start_flush(&mut self) {
        if self.flushing.is_some() || self.flush_after.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let mut candidates = self.flush_candidates();
        if candidates.is_empty() {
            return;
        }
        candidates.truncate(self.settings.group_commit_max);
        let items = candidates
            .into_iter()
            .map(|seq| {
                let slot = self.slots.get_mut(&seq).expect("candidates are in hand");
                let State::Prepared(work) = std::mem::replace(&mut slot.state, State::Flushing)
                else {
                    unreachable!("candidates are prepared")
                };
                FlushItem {
                    seq,
                    delivery: slot.delivery.clone(),
                    lane: slot.lane.clone(),
                    span: slot.span.clone(),
                    work,
                }
            })
            .collect();
        let counted = GroupMetrics::of(&mut self.metrics, self.handler.group())
            .flush
            .clone();
        let flush = tokio::spawn(group_commit(
            self.handler.group(),
            self.store.clone(),
            items,
            counted,
        ));
        self.flushing = Some(flush.boxed());
    }

    /// Takes in what a prepare or a group commit finished with.
    fn take_in(&mut self, completion: Completion) {
        match completion {
            Completion::Prepared(seq, result) => self.on_prepared(seq, result),
            Completion::Flushed(Ok(done)) => self.on_flushed(done),
            Completion::Flushed(Err(panic)) => {
                // The effects went down with the task: prepare them again.
                tracing::error!(group = self.group(), %panic, "a group commit panicked; its deliveries are prepared again");
                for slot in self.slots.values_mut() {
                    if matches!(slot.state, State::Flushing) {
                        slot.state = State::Waiting { delay: None };
                        self.dirty.push(slot.lane.clone());
                    }
                }
            }
        }
    }

    fn on_prepared(&mut self, seq: u64, result: PrepareResult) {
        self.dirty.push(self.slots[&seq].lane.clone());
        match result {
            PrepareResult::Cancelled => {
                self.slot(seq).state = State::Waiting { delay: None };
            }
            PrepareResult::Prepared(Ok(Prepared::Ignored)) => {
                self.finish(seq, Finished::Handled(Handled::Ignored));
            }
            PrepareResult::Prepared(Ok(Prepared::Duplicate)) => {
                self.finish(seq, Finished::Handled(Handled::Duplicate));
            }
            PrepareResult::Prepared(Ok(Prepared::Effect(effect))) => {
                self.slot(seq).state = State::Prepared(Work::Effect(effect));
            }
            PrepareResult::Prepared(Err(error)) => self.failed(seq, error),
        }
    }

    fn on_flushed(&mut self, done: FlushDone) {
        let group = self.group();
        match done.error {
            Some(error) => {
                self.outages = self.outages.saturating_add(1);
                let delay = OUTAGE_BACKOFF.delay(self.outages);
                tracing::error!(group, %error, ?delay, "group commit failed; its effects wait for the database");
                self.flush_after = Some(Instant::now() + delay);
                self.stop = Some(error);
            }
            None => {
                self.outages = 0;
                self.flush_after = None;
                self.report.group_commits += 1;
            }
        }
        for (seq, outcome) in done.outcomes {
            self.dirty.push(self.slots[&seq].lane.clone());
            match outcome {
                FlushOutcome::Finished(finished) => self.finish(seq, finished),
                FlushOutcome::Failed(error) => self.failed(seq, error),
                FlushOutcome::Returned(work) => self.slot(seq).state = State::Prepared(work),
            }
        }
    }

    fn slot(&mut self, seq: u64) -> &mut Slot {
        self.slots.get_mut(&seq).expect("the delivery is in hand")
    }

    /// An attempt failed: retry after a back-off, dead-letter, or (the
    /// database is down, the provider's breaker is open) wait for it without
    /// spending an attempt.
    fn failed(&mut self, seq: u64, error: WorkerError) {
        let group = self.group();
        let max_attempts = self.retry.attempts();
        let retry = self.retry;
        let slot = self.slots.get_mut(&seq).expect("the delivery is in hand");
        let delivery = &slot.delivery;
        let _entered = slot.span.enter();
        if error.is_store_unavailable() {
            self.outages = self.outages.saturating_add(1);
            let delay = OUTAGE_BACKOFF.delay(self.outages);
            tracing::warn!(group, event_id = %delivery.envelope.id, %error, ?delay, "database unavailable; the delivery waits");
            slot.state = State::Waiting { delay: Some(delay) };
            self.stop = Some(error);
            return;
        }
        if let Some(open_for) = error.circuit_open_for() {
            // Spread the wake-ups over a quarter of the wait, so the parked
            // deliveries do not all probe the half-open provider at once.
            let spread = rand::random_range(0..=open_for.as_millis() as u64 / 4 + 50);
            let delay = open_for + Duration::from_millis(spread);
            tracing::debug!(group, event_id = %delivery.envelope.id, ?delay, %error, "the provider's circuit breaker is open; the delivery waits");
            metrics::counter!(metric::BREAKER_WAITS, "group" => group).increment(1);
            slot.state = State::Waiting { delay: Some(delay) };
            self.stop = Some(error);
            return;
        }
        slot.failures += 1;
        let attempt = slot.failures;
        if attempt < max_attempts && error.is_retryable() {
            let delay = retry.delay(attempt);
            tracing::warn!(
                group, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                event_id = %delivery.envelope.id, attempt, ?delay, %error, "handler failed; retrying"
            );
            metrics::counter!(metric::RETRIES, "group" => group).increment(1);
            self.report.retries += 1;
            slot.state = State::Waiting { delay: Some(delay) };
        } else {
            tracing::error!(
                group, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset,
                event_id = %delivery.envelope.id, attempts = attempt, %error, "handler gave up; dead-lettering"
            );
            slot.span.record("otel.status_code", "ERROR");
            slot.state = State::Prepared(Work::DeadLetter {
                error: error.to_string(),
                attempts: attempt,
            });
        }
    }

    /// A delivery is finished: counted, out of its lane, and ready for
    /// its offset to be committed.
    fn finish(&mut self, seq: u64, finished: Finished) {
        let group = self.group();
        let slot = self.slots.get_mut(&seq).expect("the delivery is in hand");
        slot.state = State::Done;
        self.done_uncommitted += 1;
        let delivery = &slot.delivery;
        if let Some(lane) = self.lanes.get_mut(&slot.lane) {
            lane.retain(|other| *other != seq);
            if lane.is_empty() {
                self.lanes.remove(&slot.lane);
            }
        }
        self.report.count(finished);
        let label = match finished {
            Finished::Handled(handled) => handled.as_str(),
            Finished::DeadLettered => "dead_lettered",
        };
        let counted = GroupMetrics::of(&mut self.metrics, group);
        counted.consumed(group, &delivery.topic, label).increment(1);
        counted
            .handling
            .record(slot.started.elapsed().as_secs_f64());
        match finished {
            Finished::Handled(Handled::Stale) => counted.transitions_ignored.increment(1),
            Finished::DeadLettered => counted.dead_letters.increment(1),
            _ => {}
        }
        if matches!(
            finished,
            Finished::Handled(Handled::Applied | Handled::Stale)
        ) {
            let age = chrono::Utc::now() - delivery.envelope.time;
            let seconds = age.to_std().unwrap_or_default().as_secs_f64();
            counted.end_to_end.record(seconds);
        }
        // The span ends with the last handle: the slot's, dropped at commit.
        slot.span = tracing::Span::none();
    }

    /// Commits, per partition, the offset after the last delivery of the
    /// finished prefix, and lets those deliveries go.
    async fn commit_offsets(&mut self) -> Result<(), WorkerError> {
        let mut last = Vec::new();
        let mut released = Vec::new();
        for queue in self.partitions.values() {
            let done = queue
                .iter()
                .take_while(|seq| matches!(self.slots[seq].state, State::Done))
                .count();
            if done > 0 {
                last.push(self.slots[&queue[done - 1]].delivery.as_ref().clone());
                released.extend(queue.iter().take(done).copied());
            }
        }
        if last.is_empty() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let Some(subscription) = self.subscription.as_mut() else {
            // A poll has it; the loop commits when it comes back.
            return Ok(());
        };
        subscription.commit(&last).await?;
        self.last_commit = Instant::now();
        for seq in &released {
            self.slots.remove(seq);
        }
        self.done_uncommitted -= released.len();
        let released: HashSet<u64> = released.into_iter().collect();
        self.partitions.retain(|_, queue| {
            queue.retain(|seq| !released.contains(seq));
            !queue.is_empty()
        });
        Ok(())
    }

    /// [`Consumer::commit_offsets`] for the loop: a failure is logged and
    /// the commit is tried again later (the offsets only lag meanwhile).
    async fn commit_offsets_logged(&mut self) {
        if let Err(error) = self.commit_offsets().await {
            // Tried again after a commit interval.
            self.last_commit = Instant::now();
            tracing::warn!(group = self.group(), %error, "committing offsets failed; will retry");
        }
    }
}

/// A prepare or a group commit that finished.
enum Completion {
    Prepared(u64, PrepareResult),
    Flushed(Result<FlushDone, tokio::task::JoinError>),
}

/// Waits for the next prepare or group commit to finish (the group commit's
/// slot is emptied when it does). Cancel-safe: dropped, it leaves every
/// future where it was.
async fn next_completion(
    preparing: &mut FuturesUnordered<BoxFuture<'static, (u64, PrepareResult)>>,
    flushing: &mut Option<BoxFuture<'static, Result<FlushDone, tokio::task::JoinError>>>,
) -> Completion {
    let flush = async {
        match flushing.as_mut() {
            Some(flush) => flush.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some((seq, result)) = preparing.next(), if !preparing.is_empty() => {
            Completion::Prepared(seq, result)
        }
        done = flush => {
            *flushing = None;
            Completion::Flushed(done)
        }
    }
}

/// A poll in flight, owning the subscription until it returns it with the
/// deliveries. It lives across iterations of [`Consumer::run`]'s loop, so a
/// fetch that has started is never dropped and repeated because something
/// else finished first.
type Polling = BoxFuture<'static, (Box<dyn Subscription>, LogResult<Polled>)>;

/// Starts a poll of up to `max` deliveries waiting at most `wait`, then
/// looks up their processed marks if the group asks; shutdown cuts the wait
/// short (a poll is cancel-safe, so nothing is lost).
fn poll(
    mut subscription: Box<dyn Subscription>,
    (store, handler): (Arc<dyn Store>, Arc<dyn Handler>),
    max: usize,
    wait: Duration,
    shutdown: CancellationToken,
) -> Polling {
    async move {
        let polled = tokio::select! {
            polled = subscription.poll(max, wait) => polled,
            _ = shutdown.cancelled() => Ok(Vec::new()),
        };
        let polled = match polled {
            Ok(deliveries) => {
                let processed = look_up_marks(store.as_ref(), handler.as_ref(), &deliveries).await;
                Ok(Polled {
                    deliveries,
                    processed,
                })
            }
            Err(error) => Err(error),
        };
        (subscription, polled)
    }
    .boxed()
}

/// One attempt at preparing a delivery, after its back-off (cut short by
/// shutdown), on its own task so it runs whatever the member's loop awaits.
/// A handler that panics has failed the attempt.
fn prepare(
    seq: u64,
    (handler, store): (Arc<dyn Handler>, Arc<dyn Store>),
    (delivery, mark): (Arc<Delivery>, Mark),
    span: tracing::Span,
    delay: Option<Duration>,
    shutdown: CancellationToken,
) -> BoxFuture<'static, (u64, PrepareResult)> {
    async move {
        if let Some(delay) = delay {
            tokio::select! {
                _ = shutdown.cancelled() => return (seq, PrepareResult::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let handled_before = match mark {
            Mark::NotAsked | Mark::NotFound => Ok(false),
            Mark::Found => Ok(true),
            Mark::Unknown => store
                .is_processed(handler.group(), delivery.envelope.id)
                .await
                .map_err(WorkerError::from),
        };
        match handled_before {
            Ok(false) => {}
            Ok(true) => return (seq, PrepareResult::Prepared(Ok(Prepared::Duplicate))),
            Err(error) => return (seq, PrepareResult::Prepared(Err(error))),
        }
        let attempt =
            tokio::spawn(async move { handler.prepare(&delivery).instrument(span).await });
        let result = attempt
            .await
            .unwrap_or_else(|panic| Err(WorkerError::Panicked(panic.to_string())));
        (seq, PrepareResult::Prepared(result))
    }
    .boxed()
}

/// How long until the next point of a grid of `interval` that every member
/// in this process shares (see [`DEFAULT_GROUP_COMMIT_INTERVAL`] for why
/// shared).
fn until_grid_point(interval: Duration) -> Duration {
    static ORIGIN: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    let step = interval.as_nanos().max(1);
    let into = ORIGIN.elapsed().as_nanos() % step;
    Duration::from_nanos(u64::try_from(step - into).unwrap_or(u64::MAX))
}

/// One group commit: every item in its own savepoint inside one background
/// transaction, then, after the commit, each effect's `committed` step.
///
/// A failing effect is rolled back to its savepoint and reported as
/// `Failed`; later items of the same lane are handed back unwritten, so a
/// lane's effects are never applied out of order. A failure of the
/// transaction itself (begin, a savepoint, commit; the database is gone)
/// hands every item back.
async fn group_commit(
    group: &'static str,
    store: Arc<dyn Store>,
    items: Vec<FlushItem>,
    counted: FlushMetrics,
) -> FlushDone {
    let span = tracing::info_span!("group.commit", group, effects = items.len());
    let mut items = items;
    let written = write_all(group, store.as_ref(), &mut items)
        .instrument(span)
        .await;
    match written {
        Ok(results) => {
            counted.commits.increment(1);
            counted.effects.increment(items.len() as u64);
            let mut outcomes = Vec::with_capacity(items.len());
            for (item, result) in items.into_iter().zip(results) {
                let outcome = match result {
                    ItemResult::Written(finished) => {
                        if let (
                            Finished::Handled(Handled::Applied | Handled::Stale),
                            Work::Effect(effect),
                        ) = (finished, item.work)
                        {
                            effect.committed().instrument(item.span).await;
                        }
                        FlushOutcome::Finished(finished)
                    }
                    ItemResult::Failed(error) => FlushOutcome::Failed(error),
                    ItemResult::Held => FlushOutcome::Returned(item.work),
                };
                outcomes.push((item.seq, outcome));
            }
            FlushDone {
                outcomes,
                error: None,
            }
        }
        Err(error) => FlushDone {
            outcomes: items
                .into_iter()
                .map(|item| (item.seq, FlushOutcome::Returned(item.work)))
                .collect(),
            error: Some(error),
        },
    }
}

/// What happened to one item inside the transaction.
enum ItemResult {
    Written(Finished),
    Failed(WorkerError),
    /// Not attempted: an earlier item of its lane failed.
    Held,
}

/// The transaction of [`group_commit`]; `Err` only when the transaction as a
/// whole failed (nothing of it committed).
///
/// Effects rarely fail, and a savepoint costs two statements per effect (a
/// round trip each on SQLite), so the flush is first written without them.
/// If an effect fails, that transaction is rolled back before anything of it
/// became visible, and the flush is written again with a savepoint per
/// effect: the failing one is undone alone, its neighbours commit.
async fn write_all(
    group: &'static str,
    store: &dyn Store,
    items: &mut [FlushItem],
) -> Result<Vec<ItemResult>, WorkerError> {
    if let Some(results) = write_optimistically(group, store, items).await? {
        return Ok(results);
    }
    let mut tx = store.begin_group_commit(group).await?;
    let mut results = Vec::with_capacity(items.len());
    let mut failed_lanes: HashSet<Arc<str>> = HashSet::new();
    for item in items.iter_mut() {
        if failed_lanes.contains(&item.lane) {
            results.push(ItemResult::Held);
            continue;
        }
        tx.savepoint().await?;
        // Releasing the savepoint sends the writes the store queued for this
        // item, so a refused write fails this item, not the flush.
        let written = match apply_item(group, tx.as_mut(), item).await {
            Ok(finished) => tx
                .release_savepoint()
                .await
                .map(|()| finished)
                .map_err(WorkerError::from),
            Err(error) => Err(error),
        };
        match written {
            Ok(finished) => results.push(ItemResult::Written(finished)),
            Err(error) if error.is_store_unavailable() => return Err(error),
            Err(error) => {
                tx.rollback_to_savepoint().await?;
                failed_lanes.insert(item.lane.clone());
                results.push(ItemResult::Failed(error));
            }
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// The flush without savepoints, committed only if every item was written;
/// `None` (rolled back) when one failed, or when the commit refused a write
/// the store had queued (then the savepoint pass finds out which one).
///
/// The processed marks of every effect go first, in one statement: an
/// event whose mark existed already is a duplicate and its effect is not
/// applied, exactly as [`write_one`] decides one at a time.
async fn write_optimistically(
    group: &'static str,
    store: &dyn Store,
    items: &mut [FlushItem],
) -> Result<Option<Vec<ItemResult>>, WorkerError> {
    let mut tx = store.begin_group_commit(group).await?;
    let effect_ids: Vec<EventId> = items
        .iter()
        .filter(|item| matches!(item.work, Work::Effect(_)))
        .map(|item| item.delivery.envelope.id)
        .collect();
    let mut fresh = tx
        .mark_processed_many(group, &effect_ids)
        .await?
        .into_iter();
    let mut results = Vec::with_capacity(items.len());
    for item in items.iter_mut() {
        let written = match &mut item.work {
            Work::Effect(effect) => {
                if fresh.next() == Some(true) {
                    apply_effect(tx.as_mut(), effect.as_mut())
                        .instrument(tracing::info_span!(parent: &item.span, "event.apply"))
                        .await
                        .map(Finished::Handled)
                } else {
                    Ok(Finished::Handled(Handled::Duplicate))
                }
            }
            Work::DeadLetter { .. } => apply_item(group, tx.as_mut(), item).await,
        };
        match written {
            Ok(finished) => results.push(ItemResult::Written(finished)),
            Err(error) if error.is_store_unavailable() => return Err(error),
            Err(_) => return Ok(None),
        }
    }
    match tx.commit().await.map_err(WorkerError::from) {
        Ok(()) => Ok(Some(results)),
        Err(error) if error.is_store_unavailable() => Err(error),
        Err(_) => Ok(None),
    }
}

/// [`write_one`] in the item's `event.apply` span.
async fn apply_item(
    group: &'static str,
    tx: &mut dyn StoreTx,
    item: &mut FlushItem,
) -> Result<Finished, WorkerError> {
    write_one(group, tx, &item.delivery, &mut item.work)
        .instrument(tracing::info_span!(parent: &item.span, "event.apply"))
        .await
}

/// One item's writes: the processed mark and the effect, or the dead letter.
async fn write_one(
    group: &'static str,
    tx: &mut dyn StoreTx,
    delivery: &Delivery,
    work: &mut Work,
) -> Result<Finished, WorkerError> {
    match work {
        Work::Effect(effect) => {
            if !tx.mark_processed(group, delivery.envelope.id).await? {
                return Ok(Finished::Handled(Handled::Duplicate));
            }
            Ok(Finished::Handled(apply_effect(tx, effect.as_mut()).await?))
        }
        Work::DeadLetter { error, attempts } => {
            write_dead_letter(group, tx, delivery, error, *attempts).await?;
            Ok(Finished::DeadLettered)
        }
    }
}

/// An effect whose processed mark is written: applied.
async fn apply_effect(
    tx: &mut dyn StoreTx,
    effect: &mut dyn Effect,
) -> Result<Handled, WorkerError> {
    Ok(match effect.apply(tx).await? {
        Applied::Changed => Handled::Applied,
        Applied::Stale => Handled::Stale,
    })
}

/// One delivery prepared and written in its own transaction, without retries
/// or offsets: what a member does for one event before it commits its
/// offset (tests use it to play a member that dies right after).
pub async fn handle_once(
    handler: &dyn Handler,
    store: &dyn Store,
    delivery: &Delivery,
) -> Result<Handled, WorkerError> {
    let effect = match handler.prepare(delivery).await? {
        Prepared::Ignored => return Ok(Handled::Ignored),
        Prepared::Duplicate => return Ok(Handled::Duplicate),
        Prepared::Effect(effect) => effect,
    };
    let mut work = Work::Effect(effect);
    let mut tx = store.begin_group_commit(handler.group()).await?;
    let finished = write_one(handler.group(), tx.as_mut(), delivery, &mut work).await?;
    tx.commit().await?;
    let Finished::Handled(handled) = finished else {
        unreachable!("an effect is never a dead letter")
    };
    if let (Handled::Applied | Handled::Stale, Work::Effect(effect)) = (handled, work) {
        effect.committed().await;
    }
    Ok(handled)
}

/// Stores the dead letter and its `failed.messages` event, once per event
/// until it is replayed. The original event is deliberately not marked
/// processed, so `orderflow dlq replay` can bring it back to this group.
async fn write_dead_letter(
    group: &'static str,
    tx: &mut dyn StoreTx,
    delivery: &Delivery,
    error: &str,
    attempts: u32,
) -> Result<(), WorkerError> {
    let dead_letter = DeadLetter {
        id: uuid::Uuid::now_v7(),
        group: group.to_owned(),
        topic: delivery.topic.clone(),
        partition: delivery.partition,
        offset: delivery.offset,
        error: error.to_owned(),
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
    if tx.insert_dead_letter(&dead_letter).await? {
        tx.append(&[failed]).await?;
    } else {
        // Filed before, and the offset commit after it was lost (a crash):
        // once is enough, for the record and for its event.
        tracing::info!(group, event_id = %delivery.envelope.id, "already dead-lettered; not filed again");
    }
    Ok(())
}

/// The span of one delivery's handling (retries, dead-lettering and its
/// group commit included), a child of the span whose W3C `traceparent` the
/// event carries (the API request that placed the order, for every event
/// the order causes), so one trace shows the order in every group. Without
/// a `traceparent` (older events) it starts its own trace.
fn handling_span(group: &'static str, delivery: &Delivery) -> tracing::Span {
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
        // The trace id is recorded for the log lines, with export off too.
        orderflow_core::trace::join_remote_parent(&span, &parent);
        span.record("trace_id", tracing::field::display(parent.trace_id_hex()));
    }
    span
}
