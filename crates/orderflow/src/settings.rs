//! Typed settings, read from `ORDERFLOW_*` environment variables (or the
//! matching command-line flags). Secrets are `SecretString`s: they never
//! print, not in `--help`, not in `Debug`, not in logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use orderflow_adapters::providers::BreakerSpec;
use orderflow_domain::fraud::FraudRules;
use orderflow_domain::money::Currency;
use secrecy::SecretString;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Catalog reads go through the in-process cache.
    On,
    /// Every catalog read goes to the database (the notes' version 1).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SideEffectsMode {
    /// Consumers do stock, payment, notifications, points after the 201.
    Events,
    /// The request does all of it before it answers (the notes' version 1).
    Inline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

/// Everything orderflow can be configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "ORDERFLOW_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and the JWT signing keys.
    #[arg(
        long,
        env = "ORDERFLOW_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// `sqlite://path` (default: a file in the data dir) or `postgres://user:password@host/db`.
    #[arg(long, env = "ORDERFLOW_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Database connection pool size.
    #[arg(
        long,
        env = "ORDERFLOW_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true
    )]
    pub database_max_connections: u32,

    /// Partitions per topic of the embedded event log.
    #[arg(
        long,
        env = "ORDERFLOW_LOG_PARTITIONS",
        default_value_t = 6,
        global = true
    )]
    pub log_partitions: i32,

    /// PostgreSQL event log: milliseconds a member's partition lease lasts
    /// without renewal (how long a killed worker's partitions wait before
    /// the other members of its group take them over).
    #[arg(
        long,
        env = "ORDERFLOW_LOG_LEASE_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub log_lease_ms: u64,

    /// PostgreSQL event log: milliseconds between a member's lease renewals
    /// (at most half the lease).
    #[arg(
        long,
        env = "ORDERFLOW_LOG_LEASE_RENEW_MS",
        default_value_t = 3_000,
        global = true
    )]
    pub log_lease_renew_ms: u64,

    /// Bootstrap admin e-mail (created or promoted at start, with the password below).
    #[arg(long, env = "ORDERFLOW_ADMIN_EMAIL", global = true)]
    pub admin_email: Option<String>,

    #[arg(
        long,
        env = "ORDERFLOW_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub admin_password: Option<SecretString>,

    /// Catalog cache.
    #[arg(
        long,
        env = "ORDERFLOW_CACHE",
        value_enum,
        default_value = "on",
        global = true
    )]
    pub cache: CacheMode,

    /// How an order's side effects happen.
    #[arg(
        long,
        env = "ORDERFLOW_SIDE_EFFECTS",
        value_enum,
        default_value = "events",
        global = true
    )]
    pub side_effects: SideEffectsMode,

    /// Catalog cache TTL in seconds (jitter of up to a quarter is added).
    #[arg(
        long,
        env = "ORDERFLOW_CACHE_TTL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub cache_ttl_secs: u64,

    /// How often a live follower with no news reads its channel from the
    /// database, and a live connection checks its token for revocation
    /// (ms). On PostgreSQL without Redis this is how a change or a logout
    /// made by another process reaches a client here (default 1000); with
    /// Redis the processes ring each other over pub/sub, so it is the
    /// safety net for rings lost while Redis was away (default 30000); on
    /// SQLite without Redis one process makes every change and hears every
    /// logout, so it only guards against a bug (default 300000). Each idle
    /// follower reads once per interval: 10,000 connections at 30 s are
    /// 333 reads a second.
    #[arg(long, env = "ORDERFLOW_LIVE_RECHECK_MS", global = true)]
    pub live_recheck_ms: Option<u64>,

    /// How often each API process adds the product views it counted to the
    /// database (write-behind; a crash loses at most one interval's views).
    #[arg(
        long,
        env = "ORDERFLOW_VIEW_FLUSH_MS",
        default_value_t = 1000,
        global = true
    )]
    pub view_flush_ms: u64,

    #[command(flatten)]
    pub providers: ProviderSettings,

    #[command(flatten)]
    pub scale: ScaleOutSettings,

    /// Attempts per event before it goes to the dead-letter queue.
    #[arg(
        long,
        env = "ORDERFLOW_RETRY_MAX_ATTEMPTS",
        default_value_t = 5,
        global = true
    )]
    pub retry_max_attempts: u32,

    /// First retry delay in milliseconds (doubles each attempt, with jitter).
    #[arg(
        long,
        env = "ORDERFLOW_RETRY_BASE_MS",
        default_value_t = 100,
        global = true
    )]
    pub retry_base_ms: u64,

    /// Longest retry delay in milliseconds.
    #[arg(
        long,
        env = "ORDERFLOW_RETRY_MAX_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub retry_max_ms: u64,

    /// Deliveries each consumer-group member holds in flight at most (polled,
    /// not yet committed); sized for the slowest simulated provider (SMS,
    /// 300 ms): 1,024 in flight keep up with over 3,000 messages a second.
    #[arg(
        long,
        env = "ORDERFLOW_CONSUMER_WINDOW",
        default_value_t = orderflow_workers::runtime::DEFAULT_WINDOW,
        global = true
    )]
    pub consumer_window: usize,

    /// Effects one group commit writes at most (one transaction per flush);
    /// bounds how long a flush holds SQLite's writer.
    #[arg(
        long,
        env = "ORDERFLOW_GROUP_COMMIT_MAX",
        default_value_t = orderflow_workers::runtime::DEFAULT_GROUP_COMMIT_MAX,
        global = true
    )]
    pub group_commit_max: usize,

    /// Milliseconds between the moments a consumer-group member may start a
    /// group commit (a grid shared by the process's members, so their
    /// flushes commit together); 0: flush as soon as a delivery is ready.
    /// Fewer, larger flushes for at most this much more latency per hop.
    #[arg(
        long,
        env = "ORDERFLOW_GROUP_COMMIT_INTERVAL_MS",
        default_value_t = orderflow_workers::runtime::DEFAULT_GROUP_COMMIT_INTERVAL.as_millis() as u64,
        global = true
    )]
    pub group_commit_interval_ms: u64,

    /// SQLite: milliseconds a background write (a consumer group's commit)
    /// waits at most for the one writer while requests go first; then it
    /// goes ahead of one request. 0: requests always go first (more orders
    /// per second in an open loop, but a steady stream of requests can
    /// starve the event pipeline). See docs/benchmarks.md.
    #[arg(
        long,
        env = "ORDERFLOW_SQLITE_BACKGROUND_WAIT_MS",
        default_value_t = orderflow_adapters::sqlite::writer::DEFAULT_BACKGROUND_WAIT.as_millis() as u64,
        global = true
    )]
    pub sqlite_background_wait_ms: u64,

    /// Requests per second per client IP on the auth routes (bursts of 10x allowed); 0 turns the limit off.
    #[arg(
        long,
        env = "ORDERFLOW_AUTH_RATE_PER_SEC",
        default_value_t = 5.0,
        global = true
    )]
    pub auth_rate_per_sec: f64,

    /// Requests per second per client IP on every other route (bursts of 2x allowed); 0 turns the limit off.
    #[arg(
        long,
        env = "ORDERFLOW_RATE_PER_SEC",
        default_value_t = 0.0,
        global = true
    )]
    pub rate_per_sec: f64,

    /// Rate-limit policies per route group, per client IP or per user:
    /// `GROUP=SCOPE:ALGORITHM:NUMBERS;…` (README, "Security"); `off` for none.
    #[arg(
        long,
        env = "ORDERFLOW_RATE_LIMITS",
        default_value = orderflow_api::limits::DEFAULT_SPEC,
        global = true
    )]
    pub rate_limits: String,

    /// Deepest nesting of arrays and objects accepted in a JSON body.
    #[arg(
        long,
        env = "ORDERFLOW_MAX_JSON_DEPTH",
        default_value_t = 32,
        global = true
    )]
    pub max_json_depth: usize,

    /// Longest string (in characters) accepted in a JSON body.
    #[arg(
        long,
        env = "ORDERFLOW_MAX_JSON_STRING_CHARS",
        default_value_t = 4096,
        global = true
    )]
    pub max_json_string_chars: usize,

    /// Seconds a client may take to send a request's line and headers
    /// before the connection is closed (slow-client protection).
    #[arg(
        long,
        env = "ORDERFLOW_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub header_read_timeout_secs: u64,

    /// The form of new access tokens: `jwt` (EdDSA, `kid` in the header) or
    /// `paseto` (v4.public, the PASERK id as the footer's `kid`). On a
    /// switch, a process adds a key of the new format to the key file when
    /// it has none; tokens of the old format keep verifying until they
    /// expire, so nobody is logged out early.
    #[arg(
        long,
        env = "ORDERFLOW_TOKEN_FORMAT",
        default_value = "jwt",
        global = true
    )]
    pub token_format: orderflow_core::services::auth::TokenFormat,

    /// The reverse proxies whose `X-Forwarded-For` names the client, as
    /// addresses or networks, comma-separated (`127.0.0.1,10.0.0.0/8`).
    /// Empty (the default): the socket peer is the client. Set it to the
    /// addresses of nginx or the load balancer in front, never wider:
    /// anyone in the list can make up client addresses (rate limits and
    /// login lock-outs key on them).
    #[arg(
        long,
        env = "ORDERFLOW_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network,
        global = true
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "ORDERFLOW_MAX_BODY_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Requests taking longer than this are answered 408.
    #[arg(
        long,
        env = "ORDERFLOW_REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_secs: u64,

    /// Retention, in seconds, of events of the embedded log (once every
    /// group reading them is past them).
    #[arg(long, env = "ORDERFLOW_RETAIN_EVENTS_SECS", default_value_t = 7 * 24 * 3600, global = true)]
    pub retain_events_secs: u64,

    /// Retention of processed marks, in seconds: longer than the events'
    /// (and on Kafka than the topics' `retention.ms`), or a redelivered
    /// event would take effect twice; a shorter value is refused.
    #[arg(long, env = "ORDERFLOW_RETAIN_PROCESSED_SECS", default_value_t = 14 * 24 * 3600, global = true)]
    pub retain_processed_secs: u64,

    /// Retention of idempotency keys, in seconds (24 h: the IETF draft's
    /// suggestion); a retry after this places a new order.
    #[arg(long, env = "ORDERFLOW_RETAIN_IDEMPOTENCY_SECS", default_value_t = 24 * 3600, global = true)]
    pub retain_idempotency_secs: u64,

    /// Retention of outbox rows already published, in seconds.
    #[arg(long, env = "ORDERFLOW_RETAIN_SENT_OUTBOX_SECS", default_value_t = 24 * 3600, global = true)]
    pub retain_sent_outbox_secs: u64,

    /// Retention of replayed dead letters, in seconds.
    #[arg(long, env = "ORDERFLOW_RETAIN_DEAD_LETTERS_SECS", default_value_t = 30 * 24 * 3600, global = true)]
    pub retain_dead_letters_secs: u64,

    /// Retention of minute windows (sales, product views), in seconds (a
    /// sales read spans a week of them at most, trending a day; day sales
    /// windows are kept).
    #[arg(long, env = "ORDERFLOW_RETAIN_MINUTE_WINDOWS_SECS", default_value_t = 8 * 24 * 3600, global = true)]
    pub retain_minute_windows_secs: u64,

    /// Retention of the fraud check's remembered orders, in seconds; at
    /// least a fraud window plus its grace.
    #[arg(
        long,
        env = "ORDERFLOW_RETAIN_FRAUD_ORDERS_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub retain_fraud_orders_secs: u64,

    /// Fraud check: more orders than this by one shopper within a window
    /// holds the order.
    #[arg(
        long,
        env = "ORDERFLOW_FRAUD_MAX_ORDERS",
        default_value_t = 5,
        global = true
    )]
    pub fraud_max_orders: usize,

    /// Fraud check: more than this (in cents of the fraud currency) by one
    /// shopper within a window holds the order.
    #[arg(
        long,
        env = "ORDERFLOW_FRAUD_MAX_TOTAL_CENTS",
        default_value_t = 1_000_000,
        global = true
    )]
    pub fraud_max_total_cents: i64,

    /// Fraud check: the currency the money rule counts (orders in other
    /// currencies count for the order rule only).
    #[arg(
        long,
        env = "ORDERFLOW_FRAUD_CURRENCY",
        default_value = "EUR",
        global = true
    )]
    pub fraud_currency: String,

    /// Fraud check: the sliding window's width, in seconds.
    #[arg(
        long,
        env = "ORDERFLOW_FRAUD_WINDOW_SECS",
        default_value_t = 300,
        global = true
    )]
    pub fraud_window_secs: u32,

    /// Fraud check: how far (seconds) behind a shopper's newest order an
    /// order may be placed, by event time, and still be judged.
    #[arg(
        long,
        env = "ORDERFLOW_FRAUD_GRACE_SECS",
        default_value_t = 60,
        global = true
    )]
    pub fraud_grace_secs: u32,

    /// How often the processes that run consumer groups prune (seconds;
    /// 0: never, `orderflow prune` only).
    #[arg(
        long,
        env = "ORDERFLOW_PRUNE_INTERVAL_SECS",
        default_value_t = 600,
        global = true
    )]
    pub prune_interval_secs: u64,

    /// `text` for terminals, `json` for log collectors.
    #[arg(
        long,
        env = "ORDERFLOW_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Where a process without the HTTP API (`orderflow worker`) serves
    /// `/metrics` for Prometheus, e.g. `0.0.0.0:9464`. Unset: no listener
    /// (the API roles serve `/metrics` on their own address anyway).
    #[arg(long, env = "ORDERFLOW_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Which provider adapters to use. Simulated ones are the default: they have
/// the notes' latencies and a configurable failure rate.
#[derive(Debug, Clone, Args)]
pub struct ProviderSettings {
    #[arg(
        long,
        env = "ORDERFLOW_SIM_EMAIL_LATENCY_MS",
        default_value_t = 200,
        global = true
    )]
    pub sim_email_latency_ms: u64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_EMAIL_FAILURE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub sim_email_failure_rate: f64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_SMS_LATENCY_MS",
        default_value_t = 300,
        global = true
    )]
    pub sim_sms_latency_ms: u64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_SMS_FAILURE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub sim_sms_failure_rate: f64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_PUSH_LATENCY_MS",
        default_value_t = 100,
        global = true
    )]
    pub sim_push_latency_ms: u64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_PUSH_FAILURE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub sim_push_failure_rate: f64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_PAYMENT_LATENCY_MS",
        default_value_t = 50,
        global = true
    )]
    pub sim_payment_latency_ms: u64,
    #[arg(
        long,
        env = "ORDERFLOW_SIM_PAYMENT_FAILURE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub sim_payment_failure_rate: f64,
    /// The simulated card limit: charges above it are declined.
    #[arg(long, env = "ORDERFLOW_SIM_PAYMENT_DECLINE_ABOVE_CENTS", global = true)]
    pub sim_payment_decline_above_cents: Option<i64>,

    /// The providers' circuit breakers:
    /// `PROVIDER=RATIO/MIN_CALLS/WINDOW/OPEN_FOR;…` with `*` for every
    /// provider not named, `off` for none (README, "Resilience").
    #[arg(
        long,
        env = "ORDERFLOW_BREAKERS",
        default_value = orderflow_adapters::providers::DEFAULT_BREAKER_SPEC,
        global = true
    )]
    pub breakers: BreakerSpec,

    /// SMTP server for real e-mail; unset keeps the simulated provider.
    #[arg(long, env = "ORDERFLOW_SMTP_HOST", global = true)]
    pub smtp_host: Option<String>,
    #[arg(
        long,
        env = "ORDERFLOW_SMTP_PORT",
        default_value_t = 587,
        global = true
    )]
    pub smtp_port: u16,
    #[arg(
        long,
        env = "ORDERFLOW_SMTP_TLS",
        value_enum,
        default_value = "starttls",
        global = true
    )]
    pub smtp_tls: SmtpTls,
    #[arg(long, env = "ORDERFLOW_SMTP_USERNAME", global = true)]
    pub smtp_username: Option<String>,
    #[arg(
        long,
        env = "ORDERFLOW_SMTP_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub smtp_password: Option<SecretString>,
    #[arg(
        long,
        env = "ORDERFLOW_SMTP_FROM",
        default_value = "orderflow <orders@localhost>",
        global = true
    )]
    pub smtp_from: String,

    /// Webhook for real SMS delivery; unset keeps the simulated provider.
    #[arg(long, env = "ORDERFLOW_SMS_WEBHOOK_URL", global = true)]
    pub sms_webhook_url: Option<String>,
    /// Webhook for real push delivery; unset keeps the simulated provider.
    #[arg(long, env = "ORDERFLOW_PUSH_WEBHOOK_URL", global = true)]
    pub push_webhook_url: Option<String>,
    /// Payment gateway base URL (`/charges`, `/refunds`); unset keeps the simulated provider.
    #[arg(long, env = "ORDERFLOW_PAYMENT_WEBHOOK_URL", global = true)]
    pub payment_webhook_url: Option<String>,
    /// Bearer token sent to the webhooks.
    #[arg(
        long,
        env = "ORDERFLOW_WEBHOOK_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub webhook_token: Option<SecretString>,
}

/// The scaled adapters: each is switched on by its own setting, so any mix
/// works (PostgreSQL without Kafka, SQLite with Redis, …).
#[derive(Debug, Clone, Args)]
pub struct ScaleOutSettings {
    /// Kafka bootstrap servers `host:port,…`; set, the event log is Kafka
    /// (events go through the outbox and a relay); unset, the embedded log.
    #[arg(long, env = "ORDERFLOW_KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,

    /// Prepended to every topic and consumer-group name (several
    /// orderflows, or tests, on one cluster).
    #[arg(
        long,
        env = "ORDERFLOW_KAFKA_TOPIC_PREFIX",
        default_value = "",
        global = true
    )]
    pub kafka_topic_prefix: String,

    /// Partitions of the topics orderflow creates when they are missing.
    #[arg(
        long,
        env = "ORDERFLOW_KAFKA_PARTITIONS",
        default_value_t = 6,
        global = true
    )]
    pub kafka_partitions: i32,

    /// Replication factor of the topics orderflow creates (3 on a real cluster).
    #[arg(
        long,
        env = "ORDERFLOW_KAFKA_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub kafka_replication: i32,

    /// librdkafka `security.protocol`: plaintext, ssl, sasl_plaintext, sasl_ssl.
    #[arg(long, env = "ORDERFLOW_KAFKA_SECURITY_PROTOCOL", global = true)]
    pub kafka_security_protocol: Option<String>,
    /// librdkafka `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, env = "ORDERFLOW_KAFKA_SASL_MECHANISM", global = true)]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "ORDERFLOW_KAFKA_SASL_USERNAME", global = true)]
    pub kafka_sasl_username: Option<String>,
    #[arg(
        long,
        env = "ORDERFLOW_KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub kafka_sasl_password: Option<SecretString>,
    /// CA bundle to verify the brokers (`ssl.ca.location`).
    #[arg(long, env = "ORDERFLOW_KAFKA_SSL_CA_LOCATION", global = true)]
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    #[arg(long, env = "ORDERFLOW_KAFKA_SSL_CERTIFICATE_LOCATION", global = true)]
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    #[arg(long, env = "ORDERFLOW_KAFKA_SSL_KEY_LOCATION", global = true)]
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// Any other librdkafka property, `name=value;name=value`
    /// (for example `socket.keepalive.enable=true`).
    #[arg(
        long,
        env = "ORDERFLOW_KAFKA_CONFIG",
        hide_env_values = true,
        global = true
    )]
    pub kafka_config: Option<SecretString>,

    /// Outbox rows a relay publishes per batch.
    #[arg(
        long,
        env = "ORDERFLOW_RELAY_BATCH",
        default_value_t = 500,
        global = true
    )]
    pub relay_batch: usize,

    /// Outbox batches a relay publishes at once (the next is claimed while
    /// earlier ones wait for the broker; each key's order holds).
    #[arg(
        long,
        env = "ORDERFLOW_RELAY_IN_FLIGHT",
        default_value_t = 4,
        global = true
    )]
    pub relay_in_flight: usize,

    /// `redis://host:port/db`, `rediss://…` (TLS) or
    /// `redis+cluster://h1:p1,h2:p2,…`; set, Redis holds the shared cache,
    /// rate limits and revocations; unset, they live in each process.
    #[arg(
        long,
        env = "ORDERFLOW_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Option<SecretString>,

    /// The CA certificate (PEM) that signed the Redis servers' certificates,
    /// for a `rediss://` URL to a self-hosted Redis: trusted instead of the
    /// web PKI roots.
    #[arg(long, env = "ORDERFLOW_REDIS_CA_CERT", global = true)]
    pub redis_ca_cert: Option<PathBuf>,

    /// A client certificate (PEM) for a Redis that requires one
    /// (`tls-auth-clients yes`, Redis's default once TLS is on).
    #[arg(long, env = "ORDERFLOW_REDIS_CLIENT_CERT", global = true)]
    pub redis_client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "ORDERFLOW_REDIS_CLIENT_KEY", global = true)]
    pub redis_client_key: Option<PathBuf>,

    /// Prepended to every Redis key (several orderflows, or tests, on one Redis).
    #[arg(
        long,
        env = "ORDERFLOW_REDIS_KEY_PREFIX",
        default_value = "orderflow:",
        global = true
    )]
    pub redis_key_prefix: String,

    /// What the rate limiter does while Redis is unreachable: `open` lets
    /// requests through (counted and logged), `closed` refuses them.
    #[arg(
        long,
        env = "ORDERFLOW_RATE_LIMIT_FAIL",
        value_enum,
        default_value = "open",
        global = true
    )]
    pub rate_limit_fail: FailMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    Open,
    Closed,
}

impl ScaleOutSettings {
    /// The librdkafka properties set by the `ORDERFLOW_KAFKA_*` security
    /// settings and `ORDERFLOW_KAFKA_CONFIG`, in that order (the generic
    /// list can override a typed one).
    pub fn kafka_client_config(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        use secrecy::ExposeSecret;
        let mut config = std::collections::BTreeMap::new();
        let path = |p: &PathBuf| p.display().to_string();
        let typed = [
            ("security.protocol", self.kafka_security_protocol.clone()),
            ("sasl.mechanism", self.kafka_sasl_mechanism.clone()),
            ("sasl.username", self.kafka_sasl_username.clone()),
            (
                "sasl.password",
                self.kafka_sasl_password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned()),
            ),
            (
                "ssl.ca.location",
                self.kafka_ssl_ca_location.as_ref().map(path),
            ),
            (
                "ssl.certificate.location",
                self.kafka_ssl_certificate_location.as_ref().map(path),
            ),
            (
                "ssl.key.location",
                self.kafka_ssl_key_location.as_ref().map(path),
            ),
        ];
        for (name, value) in typed {
            if let Some(value) = value {
                config.insert(name.to_owned(), value);
            }
        }
        if let Some(extra) = &self.kafka_config {
            let pairs = extra.expose_secret().split(';');
            for (index, pair) in pairs.filter(|p| !p.trim().is_empty()).enumerate() {
                // The entry itself is not printed: it may hold a secret.
                let (name, value) = pair.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "ORDERFLOW_KAFKA_CONFIG: entry {} is not name=value",
                        index + 1
                    )
                })?;
                config.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        Ok(config)
    }
}

impl Settings {
    /// The retention horizons (checked: see [`Retention::check`]).
    ///
    /// [`Retention::check`]: orderflow_core::services::retention::Retention::check
    pub fn retention(&self) -> orderflow_core::services::retention::Retention {
        use std::time::Duration;
        orderflow_core::services::retention::Retention {
            events: Duration::from_secs(self.retain_events_secs),
            processed_marks: Duration::from_secs(self.retain_processed_secs),
            idempotency_keys: Duration::from_secs(self.retain_idempotency_secs),
            sent_outbox: Duration::from_secs(self.retain_sent_outbox_secs),
            replayed_dead_letters: Duration::from_secs(self.retain_dead_letters_secs),
            minute_windows: Duration::from_secs(self.retain_minute_windows_secs),
            fraud_orders: Duration::from_secs(self.retain_fraud_orders_secs),
            ..Default::default()
        }
    }

    /// The fraud check's rules; refused when they make no sense or outlive
    /// what the retention keeps of them.
    pub fn fraud_rules(&self) -> anyhow::Result<FraudRules> {
        let currency = Currency::parse(&self.fraud_currency)
            .map_err(|error| anyhow::anyhow!("ORDERFLOW_FRAUD_CURRENCY: {error}"))?;
        if self.fraud_window_secs == 0 {
            anyhow::bail!("ORDERFLOW_FRAUD_WINDOW_SECS must be at least 1");
        }
        let rules = FraudRules {
            max_orders: self.fraud_max_orders,
            max_total_cents: self.fraud_max_total_cents,
            currency,
            window: chrono::TimeDelta::seconds(self.fraud_window_secs.into()),
            grace: chrono::TimeDelta::seconds(self.fraud_grace_secs.into()),
        };
        let kept = chrono::TimeDelta::seconds(
            i64::try_from(self.retain_fraud_orders_secs).unwrap_or(i64::MAX),
        );
        if kept < rules.keep_for() {
            anyhow::bail!(
                "ORDERFLOW_RETAIN_FRAUD_ORDERS_SECS ({} s) must be at least the fraud window \
                 plus its grace ({} s): the check would forget orders it still judges",
                self.retain_fraud_orders_secs,
                rules.keep_for().num_seconds()
            );
        }
        Ok(rules)
    }

    /// The database URL, defaulting to a SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("orderflow.db").display()))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// A network (`10.0.0.0/8`) or one address (`10.0.0.2`, a /32 or /128).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a network like 10.0.0.0/8"))
}
