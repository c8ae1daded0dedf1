//! The embedded log's tail, kept in memory by the process that appends.
//!
//! Every consumer group reads every event of its topics, and right after an
//! append they all read the same few rows: on SQLite, eight groups each ran
//! the log read (index seek, row fetch, JSON decode) for every event, a
//! quarter of the server's CPU under load. The unit of work that appended
//! events knows them, decoded, and the offsets they got; after its commit it
//! hands them to the [`LogTail`], and a poll whose positions fall inside the
//! tail is answered from memory.
//!
//! What the tail holds is always true: per partition, a run of *committed*
//! events at consecutive offsets `first..end`. Events are added only after
//! their commit, in commit order (the committer holds SQLite's one writer
//! while it adds them). An event that does not continue the run (another
//! process appended in between, or the run was learned from a read that
//! raced the commit) starts a new run at its offset. What the tail cannot
//! know: events other processes appended past `end`. So a reader still looks
//! at the table on every look a wait ran out for, and at least every
//! [`TABLE_LOOK_EVERY`] (see the SQLite subscription), which is how soon a
//! commit of another process was seen before as well.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use orderflow_core::ports::log::Delivery;
use orderflow_domain::events::Envelope;

use super::log::Read;

/// Events kept per partition. A member further behind than this reads the
/// table until it has caught up.
pub(crate) const TAIL_EVENTS_PER_PARTITION: usize = 1024;

/// A member answered from the tail still looks at the table this often, for
/// what other processes appended.
pub(crate) const TABLE_LOOK_EVERY: Duration = Duration::from_secs(1);

/// One appended event, once its unit of work committed.
#[derive(Debug, Clone)]
pub(crate) struct TailEvent {
    pub(crate) topic: &'static str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) envelope: Arc<Envelope>,
}

/// The tail of every partition (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LogTail {
    inner: Mutex<Partitions>,
}

#[derive(Debug, Default)]
struct Partitions {
    /// Per topic, per partition number.
    topics: HashMap<String, Vec<Option<Run>>>,
    /// Bumped per added event: the order they were committed in, which
    /// merges the partitions of one read like the table's `seq` does.
    added: u64,
}

/// Committed events at consecutive offsets from `first`.
#[derive(Debug)]
struct Run {
    first: i64,
    events: VecDeque<(u64, Arc<Envelope>)>,
}

impl Run {
    fn end(&self) -> i64 {
        self.first + self.events.len() as i64
    }
}

impl Partitions {
    fn run_mut(&mut self, topic: &str, partition: i32) -> &mut Option<Run> {
        let index = usize::try_from(partition).unwrap_or(0);
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_owned(), Vec::new());
        }
        let runs = self.topics.get_mut(topic).expect("inserted above");
        if runs.len() <= index {
            runs.resize_with(index + 1, || None);
        }
        &mut runs[index]
    }

    fn run(&self, topic: &str, partition: i32) -> Option<&Run> {
        let runs = self.topics.get(topic)?;
        runs.get(usize::try_from(partition).ok()?)?.as_ref()
    }
}

impl LogTail {
    fn lock(&self) -> MutexGuard<'_, Partitions> {
        // Nothing panics while holding the lock; take over a poisoned one.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the events of one commit, in their offset order. Called right
    /// after the commit, before anyone is woken, by the committer.
    pub(crate) fn add(&self, events: Vec<TailEvent>) {
        if events.is_empty() {
            return;
        }
        let mut partitions = self.lock();
        for event in events {
            partitions.added += 1;
            let added = partitions.added;
            let run = partitions.run_mut(event.topic, event.partition);
            match run {
                Some(run) if run.end() == event.offset => {
                    run.events.push_back((added, event.envelope));
                    if run.events.len() > TAIL_EVENTS_PER_PARTITION {
                        run.events.pop_front();
                        run.first += 1;
                    }
                }
                _ => {
                    *run = Some(Run {
                        first: event.offset,
                        events: VecDeque::from([(added, event.envelope)]),
                    });
                }
            }
        }
    }

    /// What a look at the table found: `partition` ended at `end` then.
    /// Starts an empty run there if the tail knew nothing of the partition
    /// (a partition nobody appended to since the start); a known run is
    /// left alone, its events are at least as new.
    pub(crate) fn learn_end(&self, topic: &str, partition: i32, end: i64) {
        let mut partitions = self.lock();
        let run = partitions.run_mut(topic, partition);
        if run.is_none() {
            *run = Some(Run {
                first: end,
                events: VecDeque::new(),
            });
        }
    }

    /// Up to `max` deliveries past the positions of `reads`, in commit
    /// order, if the tail holds every one of those partitions from its
    /// position on; `None` if the table must be read.
    pub(crate) fn read(&self, reads: &[Read], max: usize) -> Option<Vec<Delivery>> {
        let mut found: Vec<(u64, &Read, i64, Arc<Envelope>)> = Vec::new();
        {
            let partitions = self.lock();
            for read in reads {
                let run = partitions.run(&read.topic, read.partition)?;
                if read.from < run.first || read.from > run.end() {
                    return None;
                }
                let skip = usize::try_from(read.from - run.first).unwrap_or(0);
                found.extend(
                    run.events.iter().skip(skip).take(max).zip(read.from..).map(
                        |((added, envelope), offset)| (*added, read, offset, envelope.clone()),
                    ),
                );
            }
        }
        found.sort_unstable_by_key(|(added, ..)| *added);
        found.truncate(max);
        Some(
            found
                .into_iter()
                .map(|(_, read, offset, envelope)| Delivery {
                    topic: read.topic.clone(),
                    partition: read.partition,
                    offset,
                    envelope: Envelope::clone(&envelope),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use orderflow_domain::events::EventData;

    use super::*;

    fn event(partition: i32, offset: i64) -> TailEvent {
        TailEvent {
            topic: "orders",
            partition,
            offset,
            envelope: Arc::new(Envelope::new(
                EventData::UserRegistered {
                    user_id: uuid::Uuid::now_v7(),
                    email: format!("u{offset}@example.com"),
                    name: "U".into(),
                },
                None,
            )),
        }
    }

    fn read(partition: i32, from: i64) -> Read {
        Read {
            topic: "orders".into(),
            partition,
            from,
        }
    }

    fn offsets(deliveries: &[Delivery]) -> Vec<(i32, i64)> {
        deliveries.iter().map(|d| (d.partition, d.offset)).collect()
    }

    #[test]
    fn a_partition_it_knows_nothing_of_is_read_from_the_table() {
        let tail = LogTail::default();
        assert!(tail.read(&[read(0, 0)], 10).is_none());
        tail.learn_end("orders", 0, 7);
        assert_eq!(tail.read(&[read(0, 7)], 10).map(|d| d.len()), Some(0));
        assert!(tail.read(&[read(0, 6)], 10).is_none(), "before the run");
        assert!(tail.read(&[read(0, 8)], 10).is_none(), "past what is known");
    }

    #[test]
    fn reads_merge_partitions_in_commit_order_and_keep_a_prefix_of_each() {
        let tail = LogTail::default();
        tail.learn_end("orders", 0, 0);
        tail.learn_end("orders", 1, 5);
        tail.add(vec![event(0, 0), event(1, 5)]);
        tail.add(vec![event(0, 1)]);
        tail.add(vec![event(1, 6), event(0, 2)]);
        let all = tail.read(&[read(0, 0), read(1, 5)], 10).unwrap();
        assert_eq!(offsets(&all), [(0, 0), (1, 5), (0, 1), (1, 6), (0, 2)]);
        let cut = tail.read(&[read(0, 1), read(1, 5)], 2).unwrap();
        assert_eq!(offsets(&cut), [(1, 5), (0, 1)]);
    }

    #[test]
    fn an_event_that_does_not_continue_the_run_starts_a_new_one() {
        let tail = LogTail::default();
        tail.add(vec![event(0, 3), event(0, 4)]);
        // Offset 5 came from another process: 6 cannot follow 4.
        tail.add(vec![event(0, 6)]);
        assert!(tail.read(&[read(0, 5)], 10).is_none());
        assert_eq!(offsets(&tail.read(&[read(0, 6)], 10).unwrap()), [(0, 6)]);
        // A run learned from a read that saw offset 7 committed before its
        // committer added it: the late event restarts the run below.
        tail.learn_end("orders", 1, 8);
        tail.add(vec![event(1, 7)]);
        assert_eq!(offsets(&tail.read(&[read(1, 7)], 10).unwrap()), [(1, 7)]);
    }

    #[test]
    fn the_run_keeps_the_newest_events() {
        let tail = LogTail::default();
        let count = TAIL_EVENTS_PER_PARTITION as i64 + 10;
        tail.add((0..count).map(|offset| event(0, offset)).collect());
        assert!(tail.read(&[read(0, 9)], 10).is_none(), "dropped");
        let newest = tail.read(&[read(0, 10)], usize::MAX).unwrap();
        assert_eq!(newest.len(), TAIL_EVENTS_PER_PARTITION);
        assert_eq!(newest.last().map(|d| d.offset), Some(count - 1));
    }
}
