//! [`KafkaPublisher`]: the relay's way into Kafka.
//!
//! One `FutureProducer` with `enable.idempotence=true` and `acks=all`: the
//! broker acknowledges a record only once every in-sync replica has it, and
//! librdkafka's retries can neither duplicate nor reorder records within a
//! partition. A batch is handed to librdkafka in outbox order (so one key's
//! events keep their order), then every acknowledgement is awaited; only
//! when all arrived does [`EventPublisher::publish`] return `Ok`, and only
//! then does the relay mark the rows sent.
//!
//! Each record follows the CloudEvents Kafka protocol binding in
//! *structured* mode: value = the whole event as CloudEvents JSON (the
//! envelope's `to_bytes`), header `content-type:
//! application/cloudevents+json; charset=UTF-8`, which is what tells a
//! CloudEvents SDK to read the value as a structured event (without it, the
//! binding says binary mode and the SDK looks for `ce_specversion`,
//! `ce_source` … headers). Structured rather than binary because the event
//! is one self-contained document everywhere else too (the embedded log,
//! the outbox, the dead-letter table, `failed.messages`, which wraps the
//! original), so a record can be copied, stored or replayed without losing
//! attributes to a header-stripping hop. key = the event's key (the user
//! id, so one shopper's events share a partition; the binding maps it to
//! the `partitionkey` extension, which the event carries too). Besides
//! `content-type`, only `traceparent` (W3C) travels as a header, so tracing
//! tools see it without parsing the value. No `ce_` headers: they are the
//! binary mode's, and SDKs that pick the mode by their presence (the Python
//! SDK's `from_kafka` does) would read the record as a binary event.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::log::{LogError, LogResult};
use orderflow_core::ports::outbox::{EventPublisher, OutboxEvent};
use orderflow_domain::events::STRUCTURED_CONTENT_TYPE;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{KafkaSettings, kafka_err};

/// How long librdkafka keeps trying to deliver one record (retries
/// included) before it reports the record failed. The relay then backs off
/// and publishes the batch again; a longer value would only hide an outage.
const DELIVERY_TIMEOUT: &str = "30000";

/// Publishes outbox rows to Kafka. Cheap to share behind an `Arc`; one
/// producer serves any number of concurrent `publish` calls.
pub struct KafkaPublisher {
    producer: FutureProducer,
    settings: KafkaSettings,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Makes the producer. Connects lazily: an unreachable broker shows up
    /// as a failed [`EventPublisher::publish`], not here.
    pub fn new(settings: &KafkaSettings) -> LogResult<Self> {
        let producer: FutureProducer = settings
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("delivery.timeout.ms", DELIVERY_TIMEOUT),
                // The Java client's partitioner: the same key lands on the
                // same partition whichever client produced it.
                ("partitioner", "murmur2_random"),
                // Small batches go out at once; the relay already batches.
                ("linger.ms", "5"),
            ])
            .create()
            .map_err(|e| kafka_err("creating the Kafka producer", e))?;
        Ok(Self {
            producer,
            settings: settings.clone(),
        })
    }

    /// Waits until every record handed to librdkafka was acknowledged or
    /// failed (for a clean shutdown).
    pub async fn flush(&self, timeout: Duration) -> LogResult<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| LogError::Backend(format!("flush task failed: {e}")))?
            .map_err(|e| kafka_err("flushing the Kafka producer", e))
    }
}

#[async_trait]
impl EventPublisher for KafkaPublisher {
    #[tracing::instrument(name = "kafka.publish", skip_all, fields(events = events.len()))]
    async fn publish(&self, events: &[OutboxEvent]) -> LogResult<()> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let topic = self.settings.topic(&event.topic);
            let payload = event.envelope.to_bytes();
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(STRUCTURED_CONTENT_TYPE),
            });
            if let Some(traceparent) = &event.envelope.traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_str()),
                });
            }
            let mut record = FutureRecord::to(&topic)
                .key(event.key.as_str())
                .payload(payload.as_slice())
                .headers(headers);
            // Enqueue in order. A full local queue is waited out (the queue
            // drains as acknowledgements arrive), never skipped: skipping
            // would reorder this key's events.
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((error, _)) => {
                        return Err(kafka_err(&format!("publishing to {topic}"), error));
                    }
                }
            };
            pending.push((event.topic.as_str(), event.seq, delivery));
        }

        let mut first_error = None;
        let mut acknowledged: Vec<&str> = Vec::with_capacity(pending.len());
        // Await every acknowledgement, even after a failure, so that no
        // record of this batch is still in flight when the relay retries it.
        for (topic, seq, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => acknowledged.push(topic),
                Ok(Err((error, _))) => {
                    first_error.get_or_insert_with(|| {
                        kafka_err(&format!("outbox row {seq} was not acknowledged"), error)
                    });
                }
                Err(_canceled) => {
                    first_error.get_or_insert_with(|| {
                        LogError::Unavailable(format!(
                            "outbox row {seq}: the producer shut down before the acknowledgement"
                        ))
                    });
                }
            }
        }
        for topic in acknowledged {
            metrics::counter!("orderflow_events_published_total", "topic" => topic.to_owned())
                .increment(1);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
