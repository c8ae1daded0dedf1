//! The scaled event log: Kafka (any Kafka-protocol broker) through
//! `rdkafka` (librdkafka built from source).
//!
//! Map of the module:
//! - this file: [`KafkaSettings`] (brokers, topic prefix, partitions,
//!   replication, pass-through librdkafka settings for SASL/SSL), the client
//!   configuration every client starts from, error mapping, and
//!   [`ensure_topics`], which creates orderflow's topics when missing.
//! - [`publisher`]: [`KafkaPublisher`], the relay's
//!   [`EventPublisher`](orderflow_core::ports::outbox::EventPublisher): an
//!   idempotent producer with `acks=all` that returns only once the broker
//!   acknowledged every event of a batch.
//! - [`log`]: [`KafkaEventLog`] and [`KafkaSubscription`], the
//!   [`EventLog`](orderflow_core::ports::log::EventLog) port: one Kafka
//!   consumer-group member per subscription (manual commits, cooperative
//!   rebalancing), lag from watermarks vs committed offsets.
//! - [`stall`]: [`stall::StallWatch`], which finds partitions of a group
//!   that have work and no member consuming them, so the member re-joins
//!   and the group hands them out again.
//!
//! Producing never happens from a request or a consumer directly: events are
//! appended to the outbox in the same database transaction as their cause,
//! and the relay (`orderflow_core::services::relay`) moves them here.
//!
//! Names: every topic and consumer group gets [`KafkaSettings::topic_prefix`]
//! in front (empty by default), so several installations, or several tests,
//! can share one cluster. The port's types carry the unprefixed names.

pub mod log;
pub mod publisher;
pub mod stall;

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow_core::ports::log::{LogError, LogResult};
use orderflow_domain::events::topics;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use log::{KafkaEventLog, KafkaSubscription};
pub use publisher::KafkaPublisher;

/// Partitions per topic when the operator does not choose.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// How long a metadata, offset or admin request may take before the log
/// reports itself unavailable.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the Kafka cluster is and how orderflow uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port,host:port…` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Put in front of every topic and group name (default empty). Lets
    /// several installations or tests share a cluster.
    pub topic_prefix: String,
    /// Partitions of each topic created by [`ensure_topics`] (default 6). The
    /// partition count bounds how many members of one group can work at once.
    pub partitions: i32,
    /// Replicas of each topic created by [`ensure_topics`] (default 1; use 3
    /// on a real cluster so that `acks=all` means something).
    pub replication_factor: i32,
    /// `retention.ms` of each topic created by [`ensure_topics`]: how long
    /// the broker keeps events, hence how far back `orderflow rebuild` can
    /// replay (the embedded log keeps them `ORDERFLOW_RETAIN_EVENTS_SECS`;
    /// `None`: the broker's default).
    pub topic_retention: Option<Duration>,
    /// Extra librdkafka settings, passed through unchanged and applied last
    /// (so they can override orderflow's defaults): `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`, …. Values whose name mentions a password, secret or
    /// key are never printed.
    pub client_config: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Settings for `brokers` with every default.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: 1,
            topic_retention: None,
            client_config: BTreeMap::new(),
        }
    }

    /// The Kafka name of an orderflow topic.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The Kafka name of an orderflow consumer group.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The orderflow name of a Kafka topic or group (the prefix removed).
    pub(crate) fn unprefixed<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(self.topic_prefix.as_str())
            .unwrap_or(name)
    }

    /// The configuration every client starts from: the brokers, then
    /// `overrides` (the client kind's own settings), then the operator's
    /// pass-through settings. Public so that a test can read back, through
    /// librdkafka (`create_native_config()?.get(name)`), exactly what an
    /// operator's security settings became.
    pub fn client_config(&self, overrides: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in overrides {
            config.set(*key, *value);
        }
        for (key, value) in &self.client_config {
            config.set(key, value);
        }
        config
    }
}

/// Whether a pass-through setting must not be printed.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|word| key.contains(word))
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client_config: BTreeMap<&str, &str> = self
            .client_config
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("client_config", &client_config)
            .finish()
    }
}

/// Maps a librdkafka error onto the port's error: the broker being
/// unreachable or slow is `Unavailable` (worth retrying); anything else is
/// `Backend`.
///
/// A rejected setting is told by its name only: `rdkafka` prints the value
/// too, and the value may be a password under a misspelt name
/// (`sasl.pasword=…`, which no list of secret names would recognise).
pub(crate) fn kafka_err(context: &str, error: KafkaError) -> LogError {
    use RDKafkaErrorCode as Code;
    if let KafkaError::ClientConfig(_, description, name, value) = &error {
        // librdkafka's own description names the property and, for
        // validated kinds (enumerations, lists), quotes the value in one of
        // two forms: cut those out too.
        let hidden = "<value not shown>";
        let description = description.replace(&format!("\"{value}\""), &format!("\"{hidden}\""));
        let description = match description.strip_suffix(&format!(": {value}")) {
            Some(head) if !value.is_empty() => format!("{head}: {hidden}"),
            _ => description,
        };
        return LogError::Backend(format!(
            "{context}: librdkafka refused the setting {name:?}: {description}"
        ));
    }
    let transient = matches!(
        error.rdkafka_error_code(),
        Some(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::MessageTimedOut
                | Code::OperationTimedOut
                | Code::RequestTimedOut
                | Code::Resolve
                | Code::NetworkException
                | Code::BrokerNotAvailable
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
                | Code::CoordinatorNotAvailable
                | Code::NotCoordinator
                | Code::CoordinatorLoadInProgress
                | Code::RebalanceInProgress
                | Code::QueueFull
                | Code::NotEnoughReplicas
                | Code::NotEnoughReplicasAfterAppend
                | Code::TimedOutQueue
        )
    );
    let message = format!("{context}: {error}");
    if transient {
        LogError::Unavailable(message)
    } else {
        LogError::Backend(message)
    }
}

/// The context of the clients that check that the brokers can be reached
/// (see [`reach`]): it keeps the reason of a refusal that retrying will not
/// heal, a failed SASL login or TLS handshake.
///
/// Why: librdkafka reports those only as an event for this callback and
/// then retries the connection for ever, so a request waiting for the
/// connection only ends "Local: Timed out" a minute later. librdkafka's
/// reason names the broker, the mechanism and the user, never the password.
#[derive(Default)]
pub(crate) struct ConnectionContext {
    refusal: std::sync::Mutex<Option<String>>,
}

impl ConnectionContext {
    fn refusal(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.refusal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

const TLS_FAILED: &str = "TLS with Kafka failed (check security.protocol, ssl.ca.location, \
    ssl.certificate.location and ssl.key.location, and that the brokers' listener speaks TLS)";

impl ClientContext for ConnectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        use RDKafkaErrorCode as Code;
        let what = match error.rdkafka_error_code() {
            Some(
                Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::UnsupportedSASLMechanism
                | Code::IllegalSASLState,
            ) => {
                "Kafka authentication failed (check security.protocol, sasl.mechanism, \
                 sasl.username and sasl.password)"
            }
            Some(Code::SSL) => TLS_FAILED,
            // With TLS 1.3 a broker refuses a missing or untrusted client
            // certificate only after the handshake, with an alert that
            // librdkafka reports as a transport failure carrying OpenSSL's
            // reason ("SSL routines::tlsv13 alert certificate required").
            Some(Code::BrokerTransportFailure) if reason.contains("SSL routines") => TLS_FAILED,
            _ => {
                tracing::warn!(%error, reason, "Kafka client error");
                return;
            }
        };
        tracing::error!(%error, reason, "{what}");
        *self.refusal() = Some(format!("{what}: {reason}"));
    }
}

impl ConsumerContext for ConnectionContext {}

/// A client outside any group whose events [`reach`] serves.
pub(crate) type ProbeClient = BaseConsumer<ConnectionContext>;

pub(crate) fn probe_client(settings: &KafkaSettings) -> LogResult<ProbeClient> {
    settings
        .client_config(&[])
        .create_with_context(ConnectionContext::default())
        .map_err(|e| kafka_err("creating the Kafka metadata client", e))
}

/// Fetches the cluster's metadata with `client` (blocking, at most
/// [`REQUEST_TIMEOUT`]), serving the client's events meanwhile: a refused
/// login or TLS handshake ends it at once with an error that says so,
/// instead of a time-out. A success forgets an earlier refusal (the
/// credentials were fixed on the brokers' side).
pub(crate) fn reach(client: &ProbeClient, what: &str) -> LogResult<()> {
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let error = match client.fetch_metadata(None, Duration::from_millis(250)) {
            Ok(_) => {
                *client.context().refusal() = None;
                return Ok(());
            }
            Err(e) => e,
        };
        // Without a group, `poll` serves the main queue, where librdkafka
        // puts its log and error events, handing errors to
        // `ConnectionContext::error`. It returns early only for an error;
        // log events (many with `debug` set) are served until the time is up.
        let served_until = std::time::Instant::now() + Duration::from_millis(100);
        while let Some(left) = served_until.checked_duration_since(std::time::Instant::now()) {
            if client.poll(left).is_none() {
                break;
            }
        }
        if let Some(reason) = client.context().refusal().clone() {
            return Err(LogError::Backend(format!("{what}: {reason}")));
        }
        if std::time::Instant::now() >= deadline {
            return Err(kafka_err(what, error));
        }
    }
}

/// Creates every orderflow topic (`orderflow_domain::events::topics::ALL`,
/// `failed.messages` included) that does not exist yet, with the configured
/// partitions and replication, and waits until the broker lists them all.
/// Topics that exist are left as they are (their partition count included).
///
/// It is the first call that reaches the brokers at start-up, so it first
/// checks that they can be reached ([`reach`]): a refused login or TLS
/// handshake fails start-up at once, saying so, instead of a time-out.
pub async fn ensure_topics(settings: &KafkaSettings) -> LogResult<()> {
    let probe = probe_client(settings)?;
    tokio::task::spawn_blocking(move || reach(&probe, "connecting to Kafka"))
        .await
        .map_err(|e| LogError::Backend(format!("connection check task failed: {e}")))??;
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config(&[])
        .create()
        .map_err(|e| kafka_err("creating the Kafka admin client", e))?;
    let names: Vec<String> = topics::ALL.iter().map(|t| settings.topic(t)).collect();
    let retention_ms = settings
        .topic_retention
        .map(|retention| retention.as_millis().to_string());
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            match &retention_ms {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| kafka_err("creating the orderflow topics", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(kafka_err(
                    &format!("creating topic {name}"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
    }

    // Creation is asynchronous on a real cluster: wait until the metadata
    // shows every topic with its partitions, so the first subscribe or
    // publish does not race it.
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    tokio::task::spawn_blocking(move || {
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| kafka_err("reading topic metadata", e))?;
            let missing: Vec<&String> = names
                .iter()
                .filter(|name| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == name.as_str() && !t.partitions().is_empty())
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(LogError::Unavailable(format!(
                    "topics {missing:?} were created but the broker does not list them"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .map_err(|e| LogError::Backend(format!("topic check task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let mut settings = KafkaSettings::new("k1:9092");
        settings
            .client_config
            .insert("sasl.password".into(), "hunter2".into());
        settings
            .client_config
            .insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    /// The error of a setting librdkafka refuses names the setting, never
    /// its value: `rdkafka`'s own message ends with the value, and a
    /// misspelt secret (`sasl.pasword`) is refused as unknown.
    #[test]
    fn a_refused_setting_is_named_without_its_value() {
        for (name, value, says) in [
            ("sasl.pasword", "hunter2", "No such configuration property"),
            ("security.protocol", "hunter2", "Invalid value"),
            ("ssl.key.password", "hunter2\0", "nul error"),
        ] {
            let mut settings = KafkaSettings::new("k1:9092");
            settings.client_config.insert(name.into(), value.into());
            let error = settings
                .client_config(&[])
                .create::<BaseConsumer>()
                .map(|_| ())
                .map_err(|e| kafka_err("creating a client", e))
                .expect_err("refused");
            let shown = error.to_string();
            assert!(shown.contains(says), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            if !value.contains('\0') {
                assert!(shown.contains(name), "{shown}");
            }
        }
    }

    #[test]
    fn names_carry_the_prefix() {
        let mut settings = KafkaSettings::new("k1:9092");
        settings.topic_prefix = "staging.".into();
        assert_eq!(settings.topic("order.events"), "staging.order.events");
        assert_eq!(settings.group("email"), "staging.email");
        assert_eq!(settings.unprefixed("staging.order.events"), "order.events");
    }
}
