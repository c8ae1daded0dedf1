//! [`KafkaEventLog`] and [`KafkaSubscription`]: consumer groups on Kafka.
//!
//! One [`KafkaSubscription`] is one member of a Kafka consumer group
//! (`group.id` = the orderflow group with the prefix) with
//! `enable.auto.commit=false` (offsets move only through
//! [`Subscription::commit`], after the effects are durable),
//! `auto.offset.reset=earliest` (a new group reads everything) and
//! `partition.assignment.strategy=cooperative-sticky` (a member that joins or
//! leaves moves only the partitions that must move; the others keep working).
//!
//! Why a thread per member. librdkafka runs the group protocol in the
//! background, but a rebalance is only *applied* when the application polls
//! the consumer. A member whose worker is busy (or idle between two `poll`
//! calls of the port) would hold up every rebalance of its group. So each
//! member has a small thread (the pump) that polls the consumer all the
//! time, decodes the records into a buffer, and applies rebalances at once;
//! [`Subscription::poll`] takes from that buffer. The buffer is bounded: when
//! it is full the pump pauses the member's partitions (librdkafka then
//! fetches nothing and resumes from the next unconsumed offset), and keeps
//! polling so that rebalances still go through.
//!
//! Hand-over without loss or repetition of effects:
//! - When partitions are revoked, their buffered records are dropped; the new
//!   owner starts at the group's committed offset, which is never past an
//!   effect that is not durable (commits happen after effects).
//! - Records a member already handed out and is still working on may also be
//!   delivered to the new owner. Effects are idempotent (the
//!   `processed (group, event id)` mark commits with the effect), so the
//!   second copy changes nothing.
//! - A member commits only partitions it still owns: a commit for a
//!   partition that moved would race the new owner's commits.
//! - A member never commits an offset below one it committed before, so an
//!   old batch committed late does not rewind the group.
//!
//! Partitions nobody consumes: a second small thread per member (the
//! watcher) reads the group's committed offsets every few seconds; when a
//! partition the member does not own has had lag and no commit for three
//! session timeouts, the member leaves and re-joins so the group rebalances
//! and hands it out (why a group can get there: [`super::stall`]).
//!
//! Lag ([`EventLog::lag`]): for every known group (given at construction,
//! plus every group subscribed through this log) that the broker knows (it
//! has members or committed offsets) or that subscribed here, and every
//! partition of its topics: the high watermark vs the group's committed
//! offset (the low watermark when it never committed).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::{
    Delivery, EventLog, LogError, LogResult, PartitionLag, Subscription,
};
use orderflow_domain::events::Envelope;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::stall::StallWatch;
use super::{KafkaSettings, ProbeClient, REQUEST_TIMEOUT, kafka_err, probe_client, reach};

/// How long `subscribe` waits for the member's first assignment.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Records buffered per member before the pump pauses fetching.
const BUFFER_HIGH: usize = 2_000;
/// How long one pump poll blocks; bounds how quickly a dropped member stops.
const PUMP_POLL: Duration = Duration::from_millis(50);
/// librdkafka's `session.timeout.ms` unless the operator sets another.
const SESSION_TIMEOUT_MS: &str = "10000";

/// How long a partition of the group may have lag, no commit and (as far as
/// this member can tell) no owner before this member re-joins the group:
/// three session timeouts, so that a member that died has been dropped by
/// the broker and its partitions handed over first ([`StallWatch`]).
fn stall_threshold(settings: &KafkaSettings) -> Duration {
    let session_ms = settings
        .client_config
        .get("session.timeout.ms")
        .map(String::as_str)
        .unwrap_or(SESSION_TIMEOUT_MS)
        .parse::<u64>()
        .unwrap_or(10_000);
    Duration::from_millis(session_ms * 3)
}

/// The consumer-group side of Kafka. Cheap to clone.
#[derive(Clone)]
pub struct KafkaEventLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    settings: KafkaSettings,
    /// The orderflow groups and the topics each reads (for `lag`).
    groups: BTreeMap<String, BTreeSet<String>>,
    /// Groups subscribed through this log, with their topics.
    subscribed: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// A consumer outside any group, for metadata and watermarks. Its
    /// context keeps a refused login or TLS handshake, for [`EventLog::ping`].
    metadata: Arc<ProbeClient>,
    /// Per group, a consumer that never subscribes: only reads the group's
    /// committed offsets (OffsetFetch) for `lag`.
    offset_readers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl std::fmt::Debug for KafkaEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEventLog")
            .field("settings", &self.inner.settings)
            .field("groups", &self.inner.groups)
            .finish_non_exhaustive()
    }
}

/// Takes a lock over state that every update leaves consistent, so a panic
/// elsewhere (a poisoned lock) does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn task_err(error: tokio::task::JoinError) -> LogError {
    LogError::Backend(format!("Kafka client task failed: {error}"))
}

impl KafkaEventLog {
    /// A log on the cluster of `settings`. `groups` maps each orderflow
    /// consumer group to the topics it reads (unprefixed), so that `lag`
    /// covers groups whose members run in other processes.
    pub fn new(settings: KafkaSettings, groups: BTreeMap<String, Vec<String>>) -> LogResult<Self> {
        let metadata = probe_client(&settings)?;
        Ok(Self {
            inner: Arc::new(LogInner {
                groups: groups
                    .into_iter()
                    .map(|(group, topics)| (group, topics.into_iter().collect()))
                    .collect(),
                settings,
                subscribed: Mutex::new(BTreeMap::new()),
                metadata: Arc::new(metadata),
                offset_readers: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    fn offset_reader(&self, group: &str) -> LogResult<Arc<BaseConsumer>> {
        let mut readers = lock(&self.inner.offset_readers);
        if let Some(reader) = readers.get(group) {
            return Ok(reader.clone());
        }
        let group_id = self.inner.settings.group(group);
        let reader: BaseConsumer = self
            .inner
            .settings
            .client_config(&[
                ("group.id", group_id.as_str()),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .map_err(|e| kafka_err("creating a Kafka offset reader", e))?;
        let reader = Arc::new(reader);
        readers.insert(group.to_owned(), reader.clone());
        Ok(reader)
    }
}

impl KafkaEventLog {
    /// Joins `group` as a new member reading `topics` (unprefixed): what
    /// [`EventLog::subscribe`] does, with the concrete type.
    pub async fn member(&self, group: &str, topics: &[&str]) -> LogResult<KafkaSubscription> {
        let settings = &self.inner.settings;
        let names: BTreeSet<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        lock(&self.inner.subscribed)
            .entry(group.to_owned())
            .or_default()
            .extend(names.iter().cloned());

        let shared = Arc::new(Shared::default());
        let context = MemberContext {
            shared: shared.clone(),
            prefix: settings.topic_prefix.clone(),
        };
        let group_id = settings.group(group);
        let consumer: BaseConsumer<MemberContext> = settings
            .client_config(&[
                ("group.id", group_id.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                // A member that dies without leaving (SIGKILL) hands its
                // partitions over after this long.
                ("session.timeout.ms", SESSION_TIMEOUT_MS),
                ("heartbeat.interval.ms", "1000"),
            ])
            .create_with_context(context)
            .map_err(|e| kafka_err("creating the Kafka consumer", e))?;
        let kafka_topics: Vec<String> = names.iter().map(|t| settings.topic(t)).collect();
        let kafka_topics: Vec<&str> = kafka_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&kafka_topics)
            .map_err(|e| kafka_err(&format!("subscribing {group_id} to {kafka_topics:?}"), e))?;
        let consumer = Arc::new(consumer);

        let watch = StallWatch::new(stall_threshold(settings));
        let watcher = Watcher {
            consumer: Arc::downgrade(&consumer),
            shared: shared.clone(),
            settings: settings.clone(),
            group: group.to_owned(),
            topics: names,
        };
        std::thread::Builder::new()
            .name(format!("kafka-watch-{group}"))
            .spawn(move || watcher.run(watch))
            .map_err(|e| LogError::Backend(format!("starting the stall watch thread: {e}")))?;

        let pump = {
            let consumer = consumer.clone();
            let shared = shared.clone();
            let prefix = settings.topic_prefix.clone();
            std::thread::Builder::new()
                .name(format!("kafka-{group}"))
                .spawn(move || pump(consumer, shared, prefix))
                .map_err(|e| LogError::Backend(format!("starting the consumer thread: {e}")))?
        };
        let mut subscription = KafkaSubscription {
            group: group.to_owned(),
            consumer: Some(consumer),
            shared,
            committed: HashMap::new(),
            pump: Some(pump),
        };

        // Wait for the first assignment (possibly empty, when the group has
        // more members than partitions), so that a caller that polls right
        // away is a member of the group, and lag lists it.
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let shared = subscription.shared.clone();
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = lock(&shared.state);
                if state.assignments > 0 {
                    break;
                }
                if let Some(fatal) = &state.fatal {
                    return Err(LogError::Unavailable(format!(
                        "joining consumer group {group_id}: {fatal}"
                    )));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let last = lock(&shared.state)
                    .error
                    .take()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                subscription.stop();
                return Err(LogError::Unavailable(format!(
                    "consumer group {group_id} gave this member no assignment within {JOIN_TIMEOUT:?}{last}"
                )));
            }
        }
        Ok(subscription)
    }
}

#[async_trait]
impl EventLog for KafkaEventLog {
    async fn subscribe(&self, group: &str, topics: &[&str]) -> LogResult<Box<dyn Subscription>> {
        Ok(Box::new(self.member(group, topics).await?))
    }

    async fn lag(&self) -> LogResult<Vec<PartitionLag>> {
        let mut groups = self.inner.groups.clone();
        let subscribed = lock(&self.inner.subscribed).clone();
        for (group, topics) in &subscribed {
            groups
                .entry(group.clone())
                .or_default()
                .extend(topics.iter().cloned());
        }
        let mut readers = Vec::with_capacity(groups.len());
        for (group, topics) in groups {
            let reader = self.offset_reader(&group)?;
            let here = subscribed.contains_key(&group);
            readers.push((group, topics, reader, here));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lag_blocking(readers))
            .await
            .map_err(task_err)?
    }

    async fn ping(&self) -> LogResult<()> {
        let metadata = self.inner.metadata.clone();
        tokio::task::spawn_blocking(move || reach(&metadata, "fetching Kafka metadata"))
            .await
            .map_err(task_err)?
    }

    /// Commits each partition's low watermark as the group's offset, from
    /// outside the group. Refused while the group has members: the broker
    /// would not take the commit from a non-member, and they would not see
    /// it.
    async fn rewind(
        &self,
        group: &str,
        topics: &[&str],
        force: bool,
        from: Option<orderflow_domain::Timestamp>,
    ) -> LogResult<()> {
        let this = self.clone();
        let group = group.to_owned();
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        tokio::task::spawn_blocking(move || this.rewind_blocking(&group, &topics, force, from))
            .await
            .map_err(task_err)?
    }
}

impl KafkaEventLog {
    /// `rewind` on a blocking thread: every call here is a broker round trip.
    fn rewind_blocking(
        &self,
        group: &str,
        topics: &[String],
        force: bool,
        from: Option<orderflow_domain::Timestamp>,
    ) -> LogResult<()> {
        let settings = &self.inner.settings;
        let group_id = settings.group(group);
        let client: BaseConsumer = settings
            .client_config(&[
                ("group.id", group_id.as_str()),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .map_err(|e| kafka_err("creating a Kafka client to rewind a group", e))?;
        let groups = client
            .fetch_group_list(Some(&group_id), REQUEST_TIMEOUT)
            .map_err(|e| kafka_err(&format!("describing group {group_id}"), e))?;
        // Named, because a broker may answer with every group.
        let members: Vec<String> = groups
            .groups()
            .iter()
            .filter(|g| g.name() == group_id)
            .flat_map(|g| g.members())
            .map(|m| format!("{} at {}", m.client_id(), m.client_host()))
            .collect();
        if !members.is_empty() && !force {
            return Err(LogError::GroupActive(format!(
                "{group} ({}: {})",
                members.len(),
                members.join(", ")
            )));
        }
        let mut offsets = TopicPartitionList::new();
        for topic in topics {
            let name = settings.topic(topic);
            let meta = client
                .fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                .map_err(|e| kafka_err(&format!("reading metadata of {name}"), e))?;
            let partitions = meta
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map_or(0, |t| t.partitions().len() as i32);
            for partition in 0..partitions {
                let (low, _) = client
                    .fetch_watermarks(&name, partition, REQUEST_TIMEOUT)
                    .map_err(|e| {
                        kafka_err(&format!("reading watermarks of {name}/{partition}"), e)
                    })?;
                offsets
                    .add_partition_offset(&name, partition, Offset::Offset(low))
                    .map_err(|e| kafka_err("listing the offsets to commit", e))?;
            }
        }
        if offsets.count() == 0 {
            return Ok(());
        }
        if let Some(from) = from {
            offsets = Self::back_to(&client, &offsets, from)?;
        }
        client
            .commit(&offsets, CommitMode::Sync)
            .map_err(|e| kafka_err(&format!("committing the rewound offsets of {group_id}"), e))
    }
}

impl KafkaEventLog {
    /// Per partition of `low` (the low watermarks), the offset a rewind to
    /// `from` commits: the first record whose timestamp is `from` or later
    /// (the broker's time index), or the group's committed offset when that
    /// is earlier (a rewind never skips what the group has not read); the
    /// low watermark when the group never committed.
    fn back_to(
        client: &BaseConsumer,
        low: &TopicPartitionList,
        from: orderflow_domain::Timestamp,
    ) -> LogResult<TopicPartitionList> {
        let mut at_time = TopicPartitionList::new();
        for element in low.elements() {
            at_time
                .add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(from.timestamp_millis()),
                )
                .map_err(|e| kafka_err("listing the partitions to look up", e))?;
        }
        let found = client
            .offsets_for_times(at_time, REQUEST_TIMEOUT)
            .map_err(|e| kafka_err("looking up offsets by time", e))?;
        let committed = client
            .committed_offsets(low.clone(), REQUEST_TIMEOUT)
            .map_err(|e| kafka_err("reading the group's committed offsets", e))?;
        let mut offsets = TopicPartitionList::new();
        for element in low.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset_of = |list: &TopicPartitionList| {
                list.find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(n) => Some(n),
                        _ => None,
                    })
            };
            let target = match (offset_of(&committed), offset_of(&found)) {
                (Some(committed), Some(found)) => committed.min(found),
                // Nothing at or after `from`: the group stays where it is.
                (Some(committed), None) => committed,
                (None, _) => match element.offset() {
                    Offset::Offset(low) => low,
                    _ => 0,
                },
            };
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(target))
                .map_err(|e| kafka_err("listing the offsets to commit", e))?;
        }
        Ok(offsets)
    }
}

type LagInput = Vec<(String, BTreeSet<String>, Arc<BaseConsumer>, bool)>;

impl KafkaEventLog {
    /// `lag` on a blocking thread: every call here is a broker round trip.
    fn lag_blocking(&self, groups: LagInput) -> LogResult<Vec<PartitionLag>> {
        let settings = &self.inner.settings;
        let metadata = &self.inner.metadata;
        // Groups the broker knows (with members, or with committed offsets).
        let listed: BTreeSet<String> = match metadata.fetch_group_list(None, REQUEST_TIMEOUT) {
            Ok(list) => list
                .groups()
                .iter()
                .map(|g| settings.unprefixed(g.name()).to_owned())
                .collect(),
            Err(error) => {
                tracing::debug!(%error, "listing consumer groups failed; using committed offsets only");
                BTreeSet::new()
            }
        };
        let mut marks = Marks::default();
        let mut rows = Vec::new();
        for (group, topics, reader, here) in groups {
            let (group_rows, ever_committed) =
                group_lag(settings, metadata, &reader, &group, &topics, &mut marks)?;
            if here || ever_committed || listed.contains(&group) {
                rows.extend(group_rows);
            }
        }
        rows.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        Ok(rows)
    }
}

/// Partition counts and watermarks already read in one pass (each is a
/// broker round trip, and several groups read the same topics).
#[derive(Default)]
struct Marks {
    partitions: HashMap<String, i32>,
    watermarks: HashMap<(String, i32), (i64, i64)>,
}

/// The committed offset of `group` against the end of the log, for every
/// partition of `topics` (unprefixed), and whether the group ever committed
/// any of them. `reader` is a client with the group's `group.id`;
/// `metadata` any client of the cluster. Used for [`EventLog::lag`] and by
/// each member's stall watch.
fn group_lag<R: ConsumerContext, M: ConsumerContext>(
    settings: &KafkaSettings,
    metadata: &BaseConsumer<M>,
    reader: &BaseConsumer<R>,
    group: &str,
    topics: &BTreeSet<String>,
    marks: &mut Marks,
) -> LogResult<(Vec<PartitionLag>, bool)> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let count = match marks.partitions.get(topic) {
            Some(count) => *count,
            None => {
                let name = settings.topic(topic);
                let meta = metadata
                    .fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                    .map_err(|e| kafka_err(&format!("reading metadata of {name}"), e))?;
                let count = meta
                    .topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .map(|t| t.partitions().len() as i32)
                    .unwrap_or(0);
                marks.partitions.insert(topic.clone(), count);
                count
            }
        };
        for partition in 0..count {
            tpl.add_partition(&settings.topic(topic), partition);
        }
    }
    if tpl.count() == 0 {
        return Ok((Vec::new(), false));
    }
    let committed = reader
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| kafka_err(&format!("reading the offsets of group {group}"), e))?;
    let elements = committed.elements();
    let ever_committed = elements
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)));
    let mut rows = Vec::with_capacity(elements.len());
    for element in elements {
        let topic = settings.unprefixed(element.topic()).to_owned();
        let partition = element.partition();
        let key = (topic.clone(), partition);
        let (low, high) = match marks.watermarks.get(&key) {
            Some(found) => *found,
            None => {
                let found = metadata
                    .fetch_watermarks(element.topic(), partition, REQUEST_TIMEOUT)
                    .map_err(|e| {
                        kafka_err(
                            &format!("reading watermarks of {}/{partition}", element.topic()),
                            e,
                        )
                    })?;
                marks.watermarks.insert(key, found);
                found
            }
        };
        let committed = match element.offset() {
            Offset::Offset(offset) => offset,
            // Never committed: the group starts at the beginning.
            _ => low,
        };
        rows.push(PartitionLag {
            group: group.to_owned(),
            topic,
            partition,
            committed,
            end: high,
            lag: (high - committed).max(0),
        });
    }
    Ok((rows, ever_committed))
}

/// What the pump, the rebalance callbacks and `poll` share.
#[derive(Default)]
struct Shared {
    state: Mutex<PumpState>,
    /// Signalled when records arrive, an assignment lands or an error occurs.
    notify: Notify,
    /// Set when the subscription is dropped: the pump closes the consumer.
    stop: AtomicBool,
    /// Times the stall watch made this member re-join its group.
    rejoins: AtomicU64,
}

#[derive(Default)]
struct PumpState {
    buffer: VecDeque<Delivery>,
    /// Rebalances that assigned partitions (an empty assignment counts).
    assignments: u64,
    /// The last consumer error, reported by the next `poll` that finds the
    /// buffer empty.
    error: Option<LogError>,
    /// An error that ends the member (the consumer cannot continue).
    fatal: Option<String>,
}

impl Shared {
    fn wake(&self) {
        self.notify.notify_waiters();
    }
}

/// The consumer's context: applies rebalances to the buffer.
struct MemberContext {
    shared: Arc<Shared>,
    prefix: String,
}

impl ClientContext for MemberContext {}

impl MemberContext {
    /// The (topic without the prefix, partition) pairs of `list`.
    fn partitions(&self, list: &TopicPartitionList) -> BTreeSet<(String, i32)> {
        list.elements()
            .iter()
            .map(|e| {
                let topic = e
                    .topic()
                    .strip_prefix(self.prefix.as_str())
                    .unwrap_or(e.topic());
                (topic.to_owned(), e.partition())
            })
            .collect()
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let gone = self.partitions(revoked);
            let mut state = lock(&self.shared.state);
            let before = state.buffer.len();
            state
                .buffer
                .retain(|d| !gone.contains(&(d.topic.clone(), d.partition)));
            // Rebalances are rare and are what an operator looks for when a
            // partition stops moving: logged at info, with the partitions.
            tracing::info!(
                revoked = ?gone,
                dropped = before - state.buffer.len(),
                "partitions revoked; their buffered records are left to the new owner"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                tracing::info!(assigned = ?self.partitions(assigned), "partitions assigned");
                lock(&self.shared.state).assignments += 1;
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(%error, "consumer group rebalance failed");
                lock(&self.shared.state).error =
                    Some(kafka_err("consumer group rebalance", error.clone()));
            }
        }
        self.shared.wake();
    }
}

/// The member's thread: polls the consumer until the subscription is
/// dropped, then closes it (leaving the group, so its partitions move at
/// once instead of after the session timeout).
fn pump(consumer: Arc<BaseConsumer<MemberContext>>, shared: Arc<Shared>, prefix: String) {
    let mut paused = false;
    // Rebalances seen by the last pause or resume.
    let mut applied_assignments = 0;
    while !shared.stop.load(Ordering::Acquire) {
        let (full, assignments) = {
            let state = lock(&shared.state);
            (state.buffer.len() >= BUFFER_HIGH, state.assignments)
        };
        // Also after every rebalance: a partition paused while this member
        // held it before may come back still paused (librdkafka keeps the
        // pause with the partition), and nothing else would resume it. One
        // run of the multi-process test had a group stuck at a committed
        // offset that the broker served fine to another client.
        if full || paused || assignments != applied_assignments {
            // Re-applied every round while full: partitions assigned since
            // the last pause must be paused too.
            if let Ok(assignment) = consumer.assignment() {
                let result = if full {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&assignment)
                };
                match result {
                    Ok(()) => {
                        paused = full;
                        applied_assignments = assignments;
                    }
                    Err(error) => {
                        tracing::warn!(%error, full, "pausing or resuming fetches failed")
                    }
                }
            }
        }
        match consumer.poll(PUMP_POLL) {
            None => {}
            Some(Ok(message)) => {
                let topic = message
                    .topic()
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(message.topic())
                    .to_owned();
                let (partition, offset) = (message.partition(), message.offset());
                match message.payload().map(Envelope::from_slice) {
                    Some(Ok(envelope)) => {
                        lock(&shared.state).buffer.push_back(Delivery {
                            topic,
                            partition,
                            offset,
                            envelope,
                        });
                        shared.wake();
                    }
                    // Nothing orderflow can act on (another producer wrote
                    // it): skipped, counted and logged; later deliveries of
                    // the partition commit past it.
                    Some(Err(error)) => {
                        metrics::counter!("orderflow_log_undecodable_total", "topic" => topic.clone())
                            .increment(1);
                        tracing::error!(%error, topic, partition, offset, "skipping a record that is not an orderflow event");
                    }
                    None => {
                        metrics::counter!("orderflow_log_undecodable_total", "topic" => topic.clone())
                            .increment(1);
                        tracing::error!(
                            topic,
                            partition,
                            offset,
                            "skipping a record without a value"
                        );
                    }
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "Kafka consumer error");
                let fatal = matches!(&error, KafkaError::ClientCreation(_));
                let mut state = lock(&shared.state);
                if fatal {
                    state.fatal = Some(error.to_string());
                }
                state.error = Some(kafka_err("consuming", error));
                drop(state);
                shared.wake();
            }
        }
    }
    // Dropping the last handle closes the consumer here, off the async
    // runtime (closing waits for the group to take the partitions back).
    drop(consumer);
}

/// The member's stall watch: every few seconds reads its group's committed
/// offsets and the log's end, and re-joins the group when a partition this
/// member does not own has had lag and no commit for too long (why:
/// [`super::stall`]). Holds the consumer weakly, so the pump still closes
/// it when the subscription is dropped.
struct Watcher {
    consumer: Weak<BaseConsumer<MemberContext>>,
    shared: Arc<Shared>,
    settings: KafkaSettings,
    group: String,
    topics: BTreeSet<String>,
}

impl Watcher {
    fn run(self, mut watch: StallWatch) {
        // Six looks per threshold: a stall is acted on at most a sixth late.
        let every = (watch.threshold() / 6).max(Duration::from_secs(1));
        let mut next = std::time::Instant::now() + every;
        loop {
            while std::time::Instant::now() < next {
                if self.shared.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            next = std::time::Instant::now() + every;
            let Some(consumer) = self.consumer.upgrade() else {
                return;
            };
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let mut marks = Marks::default();
            let lags = match group_lag(
                &self.settings,
                &consumer,
                &consumer,
                &self.group,
                &self.topics,
                &mut marks,
            ) {
                Ok((rows, _)) => rows,
                Err(error) => {
                    tracing::debug!(%error, group = self.group, "stall watch: reading the group's offsets failed");
                    continue;
                }
            };
            let owned = match consumer.assignment() {
                Ok(list) => consumer.context().partitions(&list),
                Err(_) => continue,
            };
            let now = std::time::Instant::now();
            let stalled = watch.observe(now, &lags, &owned);
            if stalled.is_empty() {
                continue;
            }
            tracing::warn!(
                group = self.group,
                ?stalled,
                after = ?watch.threshold(),
                "partitions of this group have lag, no commit and no owner here; \
                 re-joining the group so that it hands them out again"
            );
            metrics::counter!("orderflow_log_rejoins_total", "group" => self.group.clone())
                .increment(1);
            self.rejoin(&consumer);
            self.shared.rejoins.fetch_add(1, Ordering::Relaxed);
            watch.rejoined(now);
        }
    }

    /// Leaves the group and joins it again. Re-subscribing to the same
    /// topics does not make librdkafka re-join, leaving does; the group then
    /// rebalances with the partitions nobody claims free to give out. This
    /// member's partitions are revoked and assigned again like in any
    /// rebalance (buffers dropped, commits only for what it owns).
    fn rejoin(&self, consumer: &BaseConsumer<MemberContext>) {
        consumer.unsubscribe();
        let topics: Vec<String> = self.topics.iter().map(|t| self.settings.topic(t)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(error) = consumer.subscribe(&topics) {
            tracing::error!(%error, group = self.group, "re-subscribing after leaving the group failed");
            let mut state = lock(&self.shared.state);
            state.error = Some(kafka_err("re-joining the consumer group", error));
            drop(state);
            self.shared.wake();
        }
    }
}

/// One member of a consumer group on Kafka.
pub struct KafkaSubscription {
    group: String,
    /// `None` once stopped. The pump holds the other handle.
    consumer: Option<Arc<BaseConsumer<MemberContext>>>,
    shared: Arc<Shared>,
    /// The highest offset this member committed per (topic, partition).
    committed: HashMap<(String, i32), i64>,
    pump: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    /// Stops the pump; it closes the consumer (leaving the group) on its own
    /// thread. Our handle is dropped first so the pump's is the last one.
    fn stop(&mut self) {
        drop(self.consumer.take());
        self.shared.stop.store(true, Ordering::Release);
        // Detached on purpose: joining here would block the async runtime
        // while the consumer leaves its group.
        drop(self.pump.take());
    }

    /// How many times the stall watch made this member re-join its group.
    pub fn rejoins(&self) -> u64 {
        self.shared.rejoins.load(Ordering::Relaxed)
    }

    fn consumer(&self) -> LogResult<&Arc<BaseConsumer<MemberContext>>> {
        self.consumer
            .as_ref()
            .ok_or_else(|| LogError::Backend("the subscription was stopped".into()))
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> LogResult<Vec<Delivery>> {
        self.consumer()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = lock(&self.shared.state);
                if !state.buffer.is_empty() {
                    let take = max.min(state.buffer.len());
                    return Ok(state.buffer.drain(..take).collect());
                }
                if let Some(error) = state.error.take() {
                    return Err(error);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // On timeout, loop once more: the buffer is looked at a last time.
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn commit(&mut self, deliveries: &[Delivery]) -> LogResult<()> {
        let consumer = self.consumer()?.clone();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for delivery in deliveries {
            let entry = next
                .entry((delivery.topic.clone(), delivery.partition))
                .or_insert(0);
            *entry = (*entry).max(delivery.offset + 1);
        }
        // Never rewind what this member committed.
        next.retain(|key, offset| self.committed.get(key).is_none_or(|done| *offset > *done));
        if next.is_empty() {
            return Ok(());
        }
        let settings_prefix_topic = |topic: &str| format!("{}{topic}", self.prefix());
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            tpl.add_partition_offset(
                &settings_prefix_topic(topic),
                *partition,
                Offset::Offset(*offset),
            )
            .map_err(|e| kafka_err("building the commit", e))?;
        }
        let group = self.group.clone();
        let committed = tokio::task::spawn_blocking(move || -> LogResult<TopicPartitionList> {
            // Only partitions this member still owns: the others moved in a
            // rebalance, and their new owner commits them.
            let owned = consumer
                .assignment()
                .map_err(|e| kafka_err("reading the assignment", e))?;
            let mut mine = TopicPartitionList::new();
            for element in tpl.elements() {
                if owned
                    .find_partition(element.topic(), element.partition())
                    .is_some()
                {
                    mine.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        element.offset(),
                    )
                    .map_err(|e| kafka_err("building the commit", e))?;
                } else {
                    tracing::debug!(
                        group,
                        topic = element.topic(),
                        partition = element.partition(),
                        "not committing a partition that moved to another member"
                    );
                }
            }
            if mine.count() > 0 {
                consumer
                    .commit(&mine, CommitMode::Sync)
                    .map_err(|e| kafka_err(&format!("committing offsets of group {group}"), e))?;
            }
            Ok(mine)
        })
        .await
        .map_err(task_err)??;
        for element in committed.elements() {
            if let Offset::Offset(offset) = element.offset() {
                let topic = element
                    .topic()
                    .strip_prefix(self.prefix())
                    .unwrap_or(element.topic())
                    .to_owned();
                let done = self
                    .committed
                    .entry((topic, element.partition()))
                    .or_insert(0);
                *done = (*done).max(offset);
            }
        }
        Ok(())
    }
}

impl KafkaSubscription {
    fn prefix(&self) -> &str {
        self.consumer
            .as_ref()
            .map(|c| c.context().prefix.as_str())
            .unwrap_or("")
    }
}
