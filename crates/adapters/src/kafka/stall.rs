//! [`StallWatch`]: finds the partitions of a consumer group that have work
//! and no member consuming them, so that a member can make the group hand
//! them out again.
//!
//! Why. In the Kafka protocol a group's assignment is computed by one member
//! (the leader) from the member list the broker gave it. When a member dies
//! (SIGKILL) and the broker drops it at the wrong moment of a rebalance, the
//! leader can hand partitions to the dead member and the broker then forget
//! that member without starting another rebalance: the partitions belong to
//! nobody, every live member is content with what it has, and the group
//! stays stuck until something makes it rebalance. tansu 0.6 (the test
//! broker) does exactly this when a member misses its heartbeats while the
//! group is forming; the multi-process test saw two `payment.events`
//! partitions never consumed for 15 minutes. Any rebalance repairs it, since
//! the leader then gives the partitions nobody claims to a live member.
//!
//! How it decides. Each member looks at its own group, partition by
//! partition: the group's committed offset against the end of the log. A
//! partition that has lag, whose committed offset has not moved for the
//! threshold, and that this member does not own, is *stalled*; the member
//! then re-joins the group (see `log.rs`). The threshold is three session
//! timeouts, so a member that died normally has been dropped by the broker
//! and its partitions handed over before anyone acts.
//!
//! A live member that owns a partition and cannot make progress (a handler
//! retrying a failing provider) looks the same from outside; re-joining does
//! not take its partition away (the assignment is sticky), so the cost is one
//! needless rebalance. The threshold doubles after each re-join that left a
//! partition stalled (up to [`MAX_THRESHOLD`]), and comes back to the start
//! once the group has caught up, so such a member does not make its group
//! rebalance over and over.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use orderflow_core::ports::log::PartitionLag;

/// The longest the watch waits before re-joining again.
pub const MAX_THRESHOLD: Duration = Duration::from_secs(10 * 60);

/// A (topic without the prefix, partition) pair.
pub type TopicPartition = (String, i32);

/// The stall bookkeeping of one member (pure: the caller reads the offsets
/// and the assignment and acts on the answer).
#[derive(Debug)]
pub struct StallWatch {
    initial: Duration,
    threshold: Duration,
    /// Per partition with lag: its committed offset and since when it has
    /// had that offset.
    unchanged_since: HashMap<TopicPartition, (i64, Instant)>,
}

impl StallWatch {
    /// A watch that calls a partition stalled after `threshold` without a
    /// commit while it has lag.
    pub fn new(threshold: Duration) -> Self {
        Self {
            initial: threshold,
            threshold,
            unchanged_since: HashMap::new(),
        }
    }

    /// How long a partition must sit still before it counts as stalled now.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Takes in the group's offsets read at `now` and this member's
    /// assignment; returns the partitions that are stalled and not owned
    /// here (empty when there is nothing to do).
    pub fn observe(
        &mut self,
        now: Instant,
        lags: &[PartitionLag],
        owned: &BTreeSet<TopicPartition>,
    ) -> Vec<TopicPartition> {
        let mut stalled = Vec::new();
        let mut any_lag = false;
        let mut seen = BTreeSet::new();
        for row in lags {
            let key = (row.topic.clone(), row.partition);
            seen.insert(key.clone());
            if row.lag == 0 {
                self.unchanged_since.remove(&key);
                continue;
            }
            any_lag = true;
            let entry = self
                .unchanged_since
                .entry(key.clone())
                .or_insert((row.committed, now));
            if entry.0 != row.committed {
                *entry = (row.committed, now);
                continue;
            }
            if now.duration_since(entry.1) >= self.threshold && !owned.contains(&key) {
                stalled.push(key);
            }
        }
        self.unchanged_since.retain(|key, _| seen.contains(key));
        if !any_lag {
            self.threshold = self.initial;
        }
        stalled
    }

    /// Records that the member re-joined at `now`: every partition starts
    /// a fresh wait, and the next re-join needs twice as long.
    pub fn rejoined(&mut self, now: Instant) {
        for (_, since) in self.unchanged_since.values_mut() {
            *since = now;
        }
        self.threshold = (self.threshold * 2).min(MAX_THRESHOLD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLD: Duration = Duration::from_secs(30);

    fn row(partition: i32, committed: i64, end: i64) -> PartitionLag {
        PartitionLag {
            group: "orders".into(),
            topic: "payment.events".into(),
            partition,
            committed,
            end,
            lag: (end - committed).max(0),
        }
    }

    fn tp(partition: i32) -> TopicPartition {
        ("payment.events".into(), partition)
    }

    fn owned(partitions: &[i32]) -> BTreeSet<TopicPartition> {
        partitions.iter().map(|p| tp(*p)).collect()
    }

    #[test]
    fn a_partition_with_lag_and_no_commit_for_the_threshold_is_stalled() {
        let start = Instant::now();
        let mut watch = StallWatch::new(THRESHOLD);
        let lags = [row(0, 10, 10), row(1, 0, 447)];
        assert!(watch.observe(start, &lags, &owned(&[0])).is_empty());
        let almost = start + THRESHOLD - Duration::from_secs(1);
        assert!(watch.observe(almost, &lags, &owned(&[0])).is_empty());
        assert_eq!(
            watch.observe(start + THRESHOLD, &lags, &owned(&[0])),
            vec![tp(1)]
        );
    }

    #[test]
    fn a_partition_owned_here_is_never_stalled_for_this_member() {
        let start = Instant::now();
        let mut watch = StallWatch::new(THRESHOLD);
        let lags = [row(1, 0, 447)];
        watch.observe(start, &lags, &owned(&[1]));
        assert!(
            watch
                .observe(start + THRESHOLD * 3, &lags, &owned(&[1]))
                .is_empty()
        );
    }

    #[test]
    fn a_commit_or_a_caught_up_partition_restarts_the_wait() {
        let start = Instant::now();
        let mut watch = StallWatch::new(THRESHOLD);
        watch.observe(start, &[row(1, 0, 447)], &owned(&[]));
        // The owner (elsewhere) committed: progress, not a stall.
        let later = start + THRESHOLD;
        assert!(
            watch
                .observe(later, &[row(1, 5, 447)], &owned(&[]))
                .is_empty()
        );
        assert!(
            watch
                .observe(later + THRESHOLD / 2, &[row(1, 5, 447)], &owned(&[]))
                .is_empty()
        );
        assert_eq!(
            watch.observe(later + THRESHOLD, &[row(1, 5, 447)], &owned(&[])),
            vec![tp(1)]
        );
        // Caught up, then new records: the wait starts over.
        let caught_up = later + THRESHOLD * 2;
        assert!(
            watch
                .observe(caught_up, &[row(1, 447, 447)], &owned(&[]))
                .is_empty()
        );
        assert!(
            watch
                .observe(caught_up, &[row(1, 447, 460)], &owned(&[]))
                .is_empty()
        );
        assert!(
            watch
                .observe(caught_up + THRESHOLD / 2, &[row(1, 447, 460)], &owned(&[]))
                .is_empty()
        );
    }

    #[test]
    fn each_rejoin_that_did_not_help_doubles_the_wait_until_the_group_catches_up() {
        let start = Instant::now();
        let mut watch = StallWatch::new(THRESHOLD);
        let stuck = [row(1, 0, 447)];
        watch.observe(start, &stuck, &owned(&[]));
        let first = start + THRESHOLD;
        assert_eq!(watch.observe(first, &stuck, &owned(&[])), vec![tp(1)]);
        watch.rejoined(first);
        assert_eq!(watch.threshold(), THRESHOLD * 2);
        // Still stuck after one threshold: not yet, the wait doubled.
        assert!(
            watch
                .observe(first + THRESHOLD, &stuck, &owned(&[]))
                .is_empty()
        );
        assert_eq!(
            watch.observe(first + THRESHOLD * 2, &stuck, &owned(&[])),
            vec![tp(1)]
        );
        for _ in 0..20 {
            watch.rejoined(first);
        }
        assert_eq!(watch.threshold(), MAX_THRESHOLD);
        // Everything consumed: back to the first threshold.
        watch.observe(first, &[row(1, 447, 447)], &owned(&[]));
        assert_eq!(watch.threshold(), THRESHOLD);
    }
}
