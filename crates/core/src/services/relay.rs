//! The outbox relay: moves committed outbox rows to the event log.
//!
//! Only used when the log is Kafka (with the embedded log, the appended rows
//! *are* the log). Each step claims a batch of unsent rows from the
//! [`Outbox`], publishes it through the [`EventPublisher`] and marks the rows
//! sent only after the publisher reported every one acknowledged. So:
//! - a crash between publish and mark leaves the rows unsent; the next step
//!   (of this relay or another) publishes them again, and consumers skip the
//!   copies by event id (at-least-once delivery, exactly-once effect);
//! - a failed publish marks nothing; the relay backs off exponentially (with
//!   jitter, so several relays do not hammer a broker in step) and retries;
//! - several relays may run at once: the outbox hands each a different batch.
//!
//! [`Relay::relay_once`] is one step, for tests that drive it
//! deterministically; [`Relay::run`] loops until its `CancellationToken` is
//! cancelled.
//!
//! Metrics: `orderflow_outbox_relayed_total` (counter, by topic),
//! `orderflow_outbox_backlog` (gauge: unsent rows) and
//! `orderflow_outbox_oldest_age_seconds` (gauge: age of the oldest unsent
//! row). The gauges are refreshed after every batch, and about once a second
//! while idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CoreError;
use crate::ports::outbox::{EventPublisher, Outbox, OutboxBacklog};
use crate::services::effects::RetryPolicy;

/// How the relay paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    /// Most rows claimed and published per step.
    pub batch_size: usize,
    /// How long to wait before looking again when the outbox was drained.
    /// The outbox cannot wake the relay (it may be another process's
    /// database), so this bounds the extra latency an event sees.
    pub idle_wait: Duration,
    /// The first back-off after a failed step; doubles per failure.
    pub min_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    /// 500 rows per batch, a 50 ms look when idle, back-off from 100 ms to 10 s.
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_wait: Duration::from_millis(50),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Gauges are refreshed at most this often while the relay is idle.
const IDLE_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Moves outbox rows to the log. Cheap to clone; clones share the ports.
#[derive(Clone)]
pub struct Relay {
    outbox: Arc<dyn Outbox>,
    publisher: Arc<dyn EventPublisher>,
    settings: RelaySettings,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        publisher: Arc<dyn EventPublisher>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            publisher,
            settings,
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// One step: claims up to `batch_size` unsent rows, publishes them and,
    /// once every one is acknowledged, marks them sent. Returns how many rows
    /// were relayed (0 when the outbox had none for this relay).
    ///
    /// On `Err` nothing of the batch was marked: the claim is released and
    /// the rows are published again by a later step.
    pub async fn relay_once(&self) -> Result<usize, CoreError> {
        let batch = self.outbox.claim(self.settings.batch_size.max(1)).await?;
        let events = batch.events();
        if events.is_empty() {
            return Ok(0);
        }
        self.publisher.publish(events).await?;
        let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
        let mut per_topic: Vec<(String, u64)> = Vec::new();
        for event in events {
            match per_topic
                .iter_mut()
                .find(|(topic, _)| *topic == event.topic)
            {
                Some((_, count)) => *count += 1,
                None => per_topic.push((event.topic.clone(), 1)),
            }
        }
        // If marking fails the rows were published but stay unsent: they are
        // published again later, which consumers tolerate (see the module
        // docs). Counted only once marked, so the counter is "rows done".
        batch.mark_sent(&seqs).await?;
        for (topic, count) in per_topic {
            metrics::counter!("orderflow_outbox_relayed_total", "topic" => topic).increment(count);
        }
        Ok(seqs.len())
    }

    /// Reads the backlog and sets the two outbox gauges from it.
    pub async fn refresh_backlog(&self) -> Result<OutboxBacklog, CoreError> {
        let backlog = self.outbox.backlog().await?;
        metrics::gauge!("orderflow_outbox_backlog").set(backlog.unsent as f64);
        metrics::gauge!("orderflow_outbox_oldest_age_seconds").set(backlog.oldest_age_seconds);
        Ok(backlog)
    }

    /// Relays until `shutdown` is cancelled. A full batch is followed at once
    /// by the next; a partial one means the outbox is drained, so the relay
    /// waits `idle_wait`. Failures are logged and backed off from. A step in
    /// flight when shutdown comes is abandoned: its rows stay unsent and are
    /// published by the next relay to run (consumers skip duplicates).
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = RetryPolicy::new(
            u32::MAX,
            self.settings.min_backoff,
            self.settings.max_backoff,
        );
        let mut failures = 0u32;
        let mut gauges_at: Option<Instant> = None;
        tracing::info!(
            batch_size = self.settings.batch_size,
            "outbox relay started"
        );
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                step = self.relay_once() => step,
            };
            let pause = match step {
                Ok(relayed) => {
                    failures = 0;
                    let due = gauges_at.is_none_or(|at| at.elapsed() >= IDLE_GAUGE_INTERVAL);
                    if relayed > 0 || due {
                        match self.refresh_backlog().await {
                            Ok(_) => gauges_at = Some(Instant::now()),
                            Err(error) => {
                                tracing::warn!(%error, "reading the outbox backlog failed");
                            }
                        }
                    }
                    if relayed > 0 {
                        tracing::debug!(relayed, "outbox batch relayed");
                    }
                    if relayed >= self.settings.batch_size.max(1) {
                        continue;
                    }
                    self.settings.idle_wait
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.delay(failures).max(self.settings.min_backoff / 2);
                    tracing::error!(%error, failures, ?delay, "outbox relay step failed; backing off");
                    delay
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }
}
