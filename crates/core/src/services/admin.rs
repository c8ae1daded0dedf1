//! Operator use cases: consumer lag, the dead-letter queue, the health
//! snapshot the `admin:health` live channel sends, and the sales the
//! `analytics` group keeps (revenue per window, top products).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::CoreError;
use crate::ports::log::{EventLog, LogError, PartitionLag};
use crate::ports::outbox::{Outbox, OutboxBacklog};
use crate::ports::store::{DeadLetter, ProductSales, SalesWindow, Store};
use orderflow_domain::Timestamp;
use orderflow_domain::sales::{Granularity, WindowRange};

/// How long [`Operations::consumer_lag`] may take.
pub const LAG_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long [`Operations::export_gauges`] waits for one source.
pub const GAUGE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Operations {
    store: Arc<dyn Store>,
    log: Arc<dyn EventLog>,
    /// With Kafka: the outbox the relay drains.
    outbox: Option<Arc<dyn Outbox>>,
}

/// How many windows a sales read covers when the range is not given: an
/// hour of minutes, a month of days.
pub fn default_windows(granularity: Granularity) -> i32 {
    match granularity {
        Granularity::Minute => 60,
        Granularity::Day => 30,
    }
}
/// How many products a top list has when not asked, and at most.
pub const DEFAULT_TOP: u32 = 10;
pub const MAX_TOP: u32 = 100;

/// The operator's view of the pipeline at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSnapshot {
    /// Events not yet handled, per consumer group.
    pub consumer_lag: BTreeMap<String, i64>,
    /// The same per partition: group → `topic/partition` → lag.
    pub partition_lag: BTreeMap<String, BTreeMap<String, i64>>,
    pub dead_letters: i64,
    /// `None` without an outbox (the embedded event log).
    pub outbox: Option<OutboxBacklog>,
}

fn lag_per_partition(lags: &[PartitionLag]) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut per_group: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for lag in lags {
        per_group
            .entry(lag.group.clone())
            .or_default()
            .insert(format!("{}/{}", lag.topic, lag.partition), lag.lag);
    }
    per_group
}

fn lag_per_group(lags: &[PartitionLag]) -> BTreeMap<String, i64> {
    let mut per_group = BTreeMap::new();
    for lag in lags {
        *per_group.entry(lag.group.clone()).or_default() += lag.lag;
    }
    per_group
}

impl Operations {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn EventLog>) -> Self {
        Self {
            store,
            log,
            outbox: None,
        }
    }

    /// Reports the backlog of `outbox` in [`health`](Self::health).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Committed offset, end offset and lag of every group on every
    /// partition; the log counts as unavailable (503) when that takes longer
    /// than [`LAG_READ_TIMEOUT`] (Kafka away: every broker request of the
    /// read would wait out librdkafka's own timeout, one after the other).
    pub async fn consumer_lag(&self) -> Result<Vec<PartitionLag>, CoreError> {
        let mut lag = tokio::time::timeout(LAG_READ_TIMEOUT, self.log.lag())
            .await
            .map_err(|_| {
                LogError::Unavailable(format!(
                    "reading the consumer lag took longer than {LAG_READ_TIMEOUT:?}"
                ))
            })??;
        lag.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        Ok(lag)
    }

    /// What the `admin:health` live channel shows: lag per consumer group
    /// and per partition, dead letters, and the outbox backlog when there is an outbox.
    pub async fn health(&self) -> Result<HealthSnapshot, CoreError> {
        let outbox = match &self.outbox {
            Some(outbox) => Some(outbox.backlog().await?),
            None => None,
        };
        let lags = self.consumer_lag().await?;
        Ok(HealthSnapshot {
            consumer_lag: lag_per_group(&lags),
            partition_lag: lag_per_partition(&lags),
            dead_letters: self.store.count_dead_letters().await?,
            outbox,
        })
    }

    /// Sets the gauges that are read rather than kept:
    /// `orderflow_consumer_lag{group,topic,partition}`,
    /// `orderflow_consumer_group_lag{group}` and `orderflow_dead_letters`.
    /// Called at scrape time and on a timer (worker-only processes have no
    /// scrape hook of their own); a source that cannot be read, or not
    /// within [`GAUGE_READ_TIMEOUT`], is logged and its gauges keep their
    /// last value. The bound matters while Kafka is away: reading the lag
    /// asks the broker for its end offsets, which librdkafka keeps trying
    /// for its own 10 s timeout, and a scrape (Prometheus gives up after
    /// 10 s by default) would lose every other metric with it.
    pub async fn export_gauges(&self) {
        match tokio::time::timeout(GAUGE_READ_TIMEOUT, self.consumer_lag()).await {
            Ok(Ok(lags)) => {
                for lag in &lags {
                    metrics::gauge!("orderflow_consumer_lag", "group" => lag.group.clone(), "topic" => lag.topic.clone(), "partition" => lag.partition.to_string())
                        .set(lag.lag as f64);
                }
                for (group, lag) in lag_per_group(&lags) {
                    metrics::gauge!("orderflow_consumer_group_lag", "group" => group)
                        .set(lag as f64);
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "could not read consumer lag for the metrics"),
            Err(_) => tracing::warn!(
                timeout = ?GAUGE_READ_TIMEOUT,
                "reading consumer lag for the metrics took too long; the lag gauges keep their last value"
            ),
        }
        match tokio::time::timeout(GAUGE_READ_TIMEOUT, self.store.count_dead_letters()).await {
            Ok(Ok(count)) => metrics::gauge!("orderflow_dead_letters").set(count as f64),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not count dead letters for the metrics")
            }
            Err(_) => tracing::warn!(
                timeout = ?GAUGE_READ_TIMEOUT,
                "counting dead letters for the metrics took too long; the gauge keeps its last value"
            ),
        }
    }

    /// The range a sales read covers: `from..to` as given (checked), or
    /// the latest [`default_windows`] of the granularity up to `to` (or
    /// now), or the same number before `from`.
    pub fn sales_range(
        granularity: Granularity,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<WindowRange, CoreError> {
        let count = default_windows(granularity);
        let span = granularity.width() * count;
        let out_of_range = |field: &str| {
            orderflow_domain::ValidationError::new(field, "is too far from today to read a range")
        };
        let range = match (from, to) {
            (Some(from), Some(to)) => WindowRange::new(granularity, from, to)?,
            (Some(from), None) => {
                let to = from
                    .checked_add_signed(span)
                    .ok_or_else(|| out_of_range("from"))?;
                WindowRange::new(granularity, from, to)?
            }
            (None, Some(to)) => {
                let from = to
                    .checked_sub_signed(span)
                    .ok_or_else(|| out_of_range("to"))?;
                WindowRange::new(granularity, from, to)?
            }
            (None, None) => WindowRange::latest(granularity, count, now),
        };
        Ok(range)
    }

    /// Revenue, orders and units per window of `range`, per currency.
    pub async fn sales(&self, range: WindowRange) -> Result<Vec<SalesWindow>, CoreError> {
        Ok(self.store.sales(range).await?)
    }

    /// The `top` products by revenue over `range` (default [`DEFAULT_TOP`],
    /// 1 to [`MAX_TOP`]), per currency.
    pub async fn top_products(
        &self,
        range: WindowRange,
        top: Option<u32>,
    ) -> Result<Vec<ProductSales>, CoreError> {
        let top = top.unwrap_or(DEFAULT_TOP);
        if !(1..=MAX_TOP).contains(&top) {
            return Err(orderflow_domain::ValidationError::new(
                "top",
                format!("must be between 1 and {MAX_TOP}, not {top}"),
            )
            .into());
        }
        Ok(self.store.top_products(range, top).await?)
    }

    pub async fn dead_letters(
        &self,
        limit: Option<u32>,
        include_replayed: bool,
    ) -> Result<Vec<DeadLetter>, CoreError> {
        Ok(self
            .store
            .dead_letters(limit.unwrap_or(50).clamp(1, 500), include_replayed)
            .await?)
    }

    pub async fn dead_letter(&self, id: uuid::Uuid) -> Result<DeadLetter, CoreError> {
        self.store
            .dead_letter(id)
            .await?
            .ok_or(CoreError::NotFound("dead letter"))
    }

    /// Puts a dead letter's original event back on its topic.
    ///
    /// The event keeps its id: groups that handled it already skip it (their
    /// processed mark), and the group that gave up on it gets another chance.
    /// Marking and re-publishing commit together, so a replay happens once.
    pub async fn replay(&self, id: uuid::Uuid) -> Result<DeadLetter, CoreError> {
        let dead_letter = self.dead_letter(id).await?;
        let mut tx = self.store.begin().await?;
        if !tx.mark_dead_letter_replayed(id, chrono::Utc::now()).await? {
            return Err(CoreError::Conflict(
                "this dead letter was already replayed".into(),
            ));
        }
        tx.append(std::slice::from_ref(&dead_letter.event)).await?;
        tx.commit().await?;
        metrics::counter!("orderflow_dead_letters_replayed_total", "group" => dead_letter.group.clone()).increment(1);
        tracing::info!(%id, group = %dead_letter.group, event_id = %dead_letter.event.id, "dead letter replayed");
        Ok(dead_letter)
    }
}
