//! Logs, traces and the Prometheus recorder: everything an operator sees
//! without reading code.
//!
//! - [`init`] installs the `tracing` subscriber once per process: log lines
//!   (human-readable text, or JSON with `ORDERFLOW_LOG_FORMAT=json`), each
//!   inside the request or event-handling span that carries the `trace_id`;
//!   and, only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, an OpenTelemetry layer that
//!   exports every span over OTLP/HTTP (protobuf). The exporter reads the
//!   standard `OTEL_*` variables itself (endpoint, headers, timeout);
//!   `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the process,
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` switch it off.
//!   When unset nothing OpenTelemetry is installed, so spans cost what plain
//!   `tracing` spans cost.
//! - [`prometheus`] is the process-wide recorder behind `/metrics`, with
//!   latency buckets that resolve 100 µs to 10 s.
//! - [`Gauges`] refreshes the gauges that are read rather than kept (consumer
//!   lag, dead letters, outbox backlog, pool use, the `process_*` metrics)
//!   on a timer, so a worker-only process exports them too.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use orderflow_core::services::admin::Operations;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::LogFormat;

/// The installed telemetry; dropping it flushes the spans still buffered
/// for export (keep it alive until the process ends).
#[must_use = "dropping Telemetry shuts the span exporter down"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("orderflow: flushing traces at exit failed: {error}");
        }
    }
}

/// Installs logging and, when configured, trace export. `role` names the
/// process in traces (`orderflow-api`, `orderflow-worker`…) unless
/// `OTEL_SERVICE_NAME` says otherwise.
///
/// `RUST_LOG` overrides the default level. Installing twice (tests that
/// build several apps in one process) keeps the first subscriber.
pub fn init(format: LogFormat, role: &str) -> Telemetry {
    let directives = LogDirectives::from_env();
    let tracer_provider = match otlp_tracer_provider(role) {
        Ok(provider) => provider,
        Err(error) => {
            eprintln!("orderflow: OTLP trace export is off: {error}");
            None
        }
    };
    let tracer = tracer_provider
        .as_ref()
        .map(|provider| provider.tracer("orderflow"));
    let log_layer: Box<dyn Layer<Base> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .boxed(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            tracing_subscriber::fmt::layer()
                .fmt_fields(text_fields())
                .with_target(false)
                .with_ansi(std::io::stdout().is_terminal())
                .boxed()
        }
    };
    let otel_layer = tracer.clone().map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .boxed()
    });
    let (global, layers) = directives.layers(log_layer, otel_layer, DbQueries { tracer }.boxed());
    let installed = tracing_subscriber::registry()
        .with(global)
        .with(layers)
        .try_init();
    match installed {
        Ok(()) => {
            orderflow_core::trace::set_exporting(tracer_provider.is_some());
            Telemetry { tracer_provider }
        }
        // Someone installed a subscriber first: our exporter would never see a span.
        Err(_) => {
            if let Some(provider) = tracer_provider {
                let _ = provider.shutdown();
            }
            Telemetry {
                tracer_provider: None,
            }
        }
    }
}

/// The text log's fields: `name=value`, the message bare, as the default
/// writes them, but without styling each name (which the default does even
/// with colours off). A span's fields are formatted when it is made, so
/// this runs for every request, logged or not: the name and `=` go in as
/// they are (one `write!` with both as arguments went through `core::fmt`
/// for each), and the whole through [`BufferedFields`].
fn text_fields() -> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + 'static {
    use tracing_subscriber::field::MakeExt as _;
    let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        if field.name() != "message" {
            writer.write_str(field.name())?;
            writer.write_char('=')?;
        }
        write!(writer, "{value:?}")
    })
    .delimited(" ");
    BufferedFields(fields)
}

/// Formats fields through a buffer kept per thread, then hands the writer
/// the whole text at once.
///
/// A span's fields are formatted into a `String` of its own when the span
/// is made (every request's span is); written into piece by piece, that
/// string grew five or six times for a request span's 150-odd bytes (about
/// 40% of formatting them). Written at once, it is allocated once, at its
/// size.
struct BufferedFields<F>(F);

impl<'writer, F> tracing_subscriber::fmt::FormatFields<'writer> for BufferedFields<F>
where
    F: for<'any> tracing_subscriber::fmt::FormatFields<'any> + 'static,
{
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        use std::cell::RefCell;
        /// Larger than any span's fields; a huge event's may grow it, and
        /// it is given back past [`KEEP`].
        const KEEP: usize = 16 * 1024;
        thread_local! {
            static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        BUFFER.with(|buffer| {
            // A field whose formatting logs comes back here: unbuffered.
            let Ok(mut buffer) = buffer.try_borrow_mut() else {
                return self.0.format_fields(writer, fields);
            };
            buffer.clear();
            let formatted = self.0.format_fields(
                tracing_subscriber::fmt::format::Writer::new(&mut *buffer),
                fields,
            );
            let written = formatted.and_then(|()| writer.write_str(&buffer));
            if buffer.capacity() > KEEP {
                *buffer = String::with_capacity(512);
            }
            written
        })
    }
}

/// What `RUST_LOG` (or the default, `info,sqlx=warn,hyper=warn`) asks
/// for, as the lightest filter that does it.
///
/// Directives on targets and levels alone are a [`Targets`] filter: a
/// look-up by callsite, cached. Directives on spans or fields
/// (`[span{field=value}]`) need [`EnvFilter`], which tracks every span it
/// may care about and so takes a lock at every span's start, entry, exit
/// and close, on every request, even when no directive names a span.
#[derive(Clone)]
enum LogDirectives {
    Static(Box<Targets>),
    Dynamic(String),
}

impl LogDirectives {
    const DEFAULT: &'static str = "info,sqlx=warn,hyper=warn";

    fn from_env() -> Self {
        let directives = std::env::var(EnvFilter::DEFAULT_ENV)
            .ok()
            // What `EnvFilter` refuses falls back to the default, as it did.
            .filter(|directives| EnvFilter::try_new(directives).is_ok())
            .unwrap_or_else(|| Self::DEFAULT.to_owned());
        Self::parse(&directives)
    }

    fn parse(directives: &str) -> Self {
        let dynamic = directives.contains(['[', '{']);
        match directives.parse::<Targets>() {
            Ok(targets) if !dynamic && !directives.trim().is_empty() => {
                Self::Static(Box::new(targets))
            }
            _ => Self::Dynamic(directives.to_owned()),
        }
    }

    /// A per-layer filter of these directives.
    fn filter<S>(&self) -> Box<dyn Filter<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        match self {
            Self::Static(targets) => Box::new(Targets::clone(targets)),
            Self::Dynamic(directives) => Box::new(EnvFilter::new(directives)),
        }
    }

    /// The subscriber's global filter and its layers: the log layer and
    /// the span exporter see what the directives let through, [`DbQueries`]
    /// the statement events.
    ///
    /// Targets and levels alone (the default): one global filter lets
    /// through what the directives ask for and the statement events, and
    /// [`OnlyDirected`] keeps the statement events out of the log.
    /// Per-layer filters (`with_filter`) did the same, and made every span's
    /// entry, exit and close look the span up once per filtered layer (to
    /// learn whether that layer had it): six look-ups per request.
    ///
    /// The span exporter keeps its per-layer filter: it is found by
    /// downcasting the subscriber, which a wrapper could only pass on with
    /// unsafe code. Directives on spans or fields keep per-layer filters
    /// throughout: an `EnvFilter` cannot be merged with another.
    fn layers(
        &self,
        log: Box<dyn Layer<Base> + Send + Sync>,
        exporter: Option<Box<dyn Layer<Base> + Send + Sync>>,
        db_queries: Box<dyn Layer<Base> + Send + Sync>,
    ) -> (Option<Targets>, Vec<Box<dyn Layer<Base> + Send + Sync>>) {
        let exporter = exporter.map(|layer| layer.with_filter(self.filter()).boxed());
        match self {
            Self::Static(targets) => {
                let log = Box::new(OnlyDirected {
                    inner: log,
                    targets: Targets::clone(targets),
                });
                let mut global = Targets::clone(targets);
                for (target, level) in DB_QUERY_TARGETS {
                    if !global.would_enable(target, &level) {
                        global = global.with_target(target, level);
                    }
                }
                let layers = std::iter::once(log as Box<dyn Layer<Base> + Send + Sync>)
                    .chain(exporter)
                    .chain([db_queries])
                    .collect();
                (Some(global), layers)
            }
            Self::Dynamic(_) => {
                let db_targets = Targets::new().with_targets(DB_QUERY_TARGETS);
                let layers = std::iter::once(log.with_filter(self.filter()).boxed())
                    .chain(exporter)
                    .chain([db_queries.with_filter(db_targets).boxed()])
                    .collect();
                (None, layers)
            }
        }
    }
}

/// The layers' subscriber: the registry under the global filter (none for
/// directives on spans or fields).
type Base = tracing_subscriber::layer::Layered<Option<Targets>, Registry>;

/// The statement events [`DbQueries`] reads, whatever the log shows.
const DB_QUERY_TARGETS: [(&str, tracing::Level); 2] = [
    ("sqlx::query", tracing::Level::DEBUG),
    ("orderflow::db", tracing::Level::DEBUG),
];

/// `inner`, told only of the events `targets` let through; spans and the
/// rest as they come (the global filter let through nothing else that
/// makes spans). Only for the log layer: `inner` cannot be found by
/// downcasting through it.
struct OnlyDirected<L> {
    inner: L,
    targets: Targets,
}

impl<S, L> Layer<S> for OnlyDirected<L>
where
    S: tracing::Subscriber,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        use tracing_log::NormalizeEvent as _;
        // A `log` record (librdkafka's lines come so) arrives on its
        // level's callsite, target "log"; its own target is in a field.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if self
            .targets
            .would_enable(metadata.target(), metadata.level())
        {
            self.inner.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_id_change(old, new, ctx);
    }
}

/// Turns the per-statement event of the database layer (target `sqlx::query`,
/// sqlx's own, for PostgreSQL and migrations; target `orderflow::db`, the
/// same fields, from the SQLite connections the store drives in place), emitted
/// when a statement finishes, with its elapsed time, into
/// `orderflow_db_query_duration_seconds{operation}` and, when traces are
/// exported, a client span `db SELECT`… under the request or handling span
/// that ran it. Working from these events times every statement of every
/// database adapter exactly, without wrapping each query in the callers;
/// `orderflow_db_queries_total{op}` (counted by the adapters) names the
/// statement by purpose.
struct DbQueries {
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

impl<S> Layer<S> for DbQueries
where
    S: tracing::Subscriber,
{
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if !matches!(event.metadata().target(), "sqlx::query" | "orderflow::db") {
            return;
        }
        let mut fields = QueryFields {
            keep_summary: self.tracer.is_some(),
            operation: operation_of(""),
            ..QueryFields::default()
        };
        event.record(&mut fields);
        let Some(elapsed) = fields.elapsed_secs else {
            return;
        };
        let operation = fields.operation;
        metrics::histogram!("orderflow_db_query_duration_seconds", "operation" => operation)
            .record(elapsed);
        if let Some(tracer) = &self.tracer {
            use opentelemetry::KeyValue;
            use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let parent = tracing::Span::current().context();
            let end = std::time::SystemTime::now();
            let start = end
                .checked_sub(Duration::from_secs_f64(elapsed.max(0.0)))
                .unwrap_or(end);
            let mut span = tracer
                .span_builder(format!("db {}", operation.to_ascii_uppercase()))
                .with_kind(SpanKind::Client)
                .with_start_time(start)
                .with_attributes([
                    KeyValue::new("db.operation.name", operation.to_ascii_uppercase()),
                    KeyValue::new("db.query.summary", fields.summary),
                ])
                .start_with_context(tracer, &parent);
            span.end_with_timestamp(end);
        }
    }
}

/// The fields of a statement event that matter here. The statement's text
/// is copied only when spans are exported: this runs for every statement,
/// dozens per order, so the histogram's label is read off the text in place.
#[derive(Default)]
struct QueryFields {
    keep_summary: bool,
    summary: String,
    operation: &'static str,
    elapsed_secs: Option<f64>,
}

impl QueryFields {
    fn summary(&mut self, text: &str) {
        self.operation = operation_of(text);
        if self.keep_summary {
            self.summary = text.to_owned();
        }
    }
}

/// The `operation` label of a statement: its first word, lowercase, if it
/// is one of the verbs orderflow runs, else `other`.
fn operation_of(text: &str) -> &'static str {
    let verb = text.split_whitespace().next().unwrap_or_default();
    [
        "select",
        "insert",
        "update",
        "delete",
        "begin",
        "commit",
        "rollback",
        "with",
        "pragma",
        "savepoint",
        "release",
    ]
    .into_iter()
    .find(|known| verb.eq_ignore_ascii_case(known))
    .unwrap_or("other")
}

impl tracing::field::Visit for QueryFields {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = Some(value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.summary(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.summary(format!("{value:?}").trim_matches('"'));
        }
    }
}

/// Kept for callers that only want logs (no trace export).
pub fn init_logging(format: LogFormat) {
    std::mem::forget(init(format, "orderflow"));
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// The OTLP span pipeline, when the standard variables ask for one.
fn otlp_tracer_provider(role: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let configured =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    if !configured || disabled {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    // The exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as given, but
    // joins /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT itself; setting it
    // explicitly here would lose that, so only the protocol is fixed.
    exporter = exporter.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    let exporter = exporter.build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(format!("orderflow-{role}"));
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Buckets from 100 µs to 10 s (roughly 1-2.5-5 per decade), for every
/// `_seconds` histogram: request, query, handling and end-to-end latencies.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process-wide Prometheus recorder. The `metrics` facade has one global
/// recorder, so it is installed once and its handle shared.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder();
            let handle = match recorder {
                Ok(handle) => handle,
                // Another recorder is installed (only possible in tests that
                // build their own): keep a detached one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe_metrics();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often [`spawn_upkeep`] drains the recorder.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the recorder's pending histogram samples into its buckets every
/// [`UPKEEP_EVERY`], on a thread of its own. `install_recorder` does not
/// (only the exporter's own HTTP listener does), and a recorder drains only
/// when rendered: in a process nobody scrapes, such as `orderflow worker`,
/// every observation stayed in memory, about 3 KiB per order handled
/// (measured by `orderflow bench --soak`; metrics-rs/metrics#467).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the metrics upkeep thread; histograms drain only when /metrics is scraped");
    }
}

/// `# HELP` lines for the metrics an operator reads first.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    process_collector().describe();
    describe_counter!(
        "orderflow_http_requests_total",
        "HTTP requests by route template, method, status and status class"
    );
    describe_histogram!(
        "orderflow_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    describe_gauge!(
        "orderflow_http_requests_in_flight",
        "HTTP requests being served right now"
    );
    describe_counter!(
        "orderflow_db_queries_total",
        "Database statements by operation"
    );
    describe_histogram!(
        "orderflow_db_query_duration_seconds",
        Unit::Seconds,
        "Database statement latency by operation"
    );
    describe_gauge!(
        "orderflow_db_pool_connections",
        "Database pool connections by state (in_use, idle)"
    );
    describe_gauge!(
        "orderflow_consumer_lag",
        "Events not yet committed by a consumer group, per topic and partition"
    );
    describe_gauge!(
        "orderflow_dead_letters",
        "Dead letters not replayed yet (the failed.messages backlog)"
    );
    describe_gauge!(
        "orderflow_outbox_backlog",
        "Outbox rows not yet published to the event log"
    );
    describe_gauge!(
        "orderflow_outbox_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest unpublished outbox row (0 when empty)"
    );
    describe_counter!(
        "orderflow_events_consumed_total",
        "Deliveries finished per group, topic and outcome"
    );
    describe_counter!(
        "orderflow_events_published_total",
        "Events made visible on the event log per topic"
    );
    describe_histogram!(
        "orderflow_event_end_to_end_seconds",
        Unit::Seconds,
        "From an event's creation to its effect, per consumer group"
    );
    describe_counter!(
        "orderflow_orders_total",
        "Orders by outcome: placed, confirmed, rejected, payment_failed"
    );
    describe_counter!(
        "orderflow_revenue_cents_total",
        "Revenue of confirmed orders, in cents of the currency label"
    );
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Reads the pool gauges of the database adapter in use.
pub type PoolGauges = Arc<dyn Fn() + Send + Sync>;

/// The gauges that are read from their source instead of kept up to date.
#[derive(Clone)]
pub struct Gauges {
    pub operations: Arc<Operations>,
    pub pool: Option<PoolGauges>,
}

impl Gauges {
    /// How often [`Gauges::spawn`] refreshes; well under Prometheus' usual
    /// 15 s scrape interval.
    pub const INTERVAL: Duration = Duration::from_secs(5);

    /// Refreshes every gauge once. A source that cannot be read is logged and
    /// keeps its last value (the scrape still answers).
    pub async fn refresh(&self) {
        process_collector().collect();
        if let Some(pool) = &self.pool {
            pool();
        }
        self.operations.export_gauges().await;
    }

    /// Refreshes on a timer until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Self::INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => self.refresh().await,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{LogDirectives, operation_of, text_fields};
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A log writer whose text the test reads back.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn target_and_level_directives_are_a_static_filter() {
        let LogDirectives::Static(targets) = LogDirectives::parse(LogDirectives::DEFAULT) else {
            panic!("the default names targets and levels only");
        };
        assert!(targets.would_enable("orderflow_api::observe", &Level::INFO));
        assert!(!targets.would_enable("orderflow_api::observe", &Level::DEBUG));
        assert!(!targets.would_enable("sqlx::query", &Level::INFO));
        assert!(targets.would_enable("sqlx::query", &Level::WARN));
        assert!(targets.would_enable("hyper::proto", &Level::WARN));

        let LogDirectives::Static(targets) = LogDirectives::parse("warn,orderflow_api=debug")
        else {
            panic!("targets and levels only");
        };
        assert!(targets.would_enable("orderflow_api::observe", &Level::DEBUG));
        assert!(!targets.would_enable("orderflow_workers", &Level::INFO));
    }

    /// What one set of directives logs and hands the statement layer: the
    /// log's text, and how many statement events that layer saw.
    fn logged_and_counted(directives: &str) -> (String, usize) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tracing_subscriber::Layer;

        /// Counts the statement events it is told of, as `DbQueries` reads them.
        struct Statements(Arc<AtomicUsize>);
        impl<S: tracing::Subscriber> Layer<S> for Statements {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if event.metadata().target() == "sqlx::query" {
                    self.0.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        let written = Written::default();
        let statements = Arc::new(AtomicUsize::new(0));
        let writer = written.clone();
        let log = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .boxed();
        let (global, layers) = LogDirectives::parse(directives).layers(
            log,
            None,
            Statements(statements.clone()).boxed(),
        );
        let subscriber = tracing_subscriber::registry().with(global).with(layers);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http.request", url.path = "/x");
            let _entered = span.enter();
            tracing::info!(target: "orderflow_api", "a line at info");
            tracing::debug!(target: "orderflow_api", "a line at debug");
            tracing::debug!(target: "sqlx::query", elapsed_secs = 0.001, "a statement");
            // As `LogTracer` hands on a `log` record (librdkafka's lines).
            tracing_log::format_trace(
                &log::Record::builder()
                    .target("librdkafka")
                    .level(log::Level::Debug)
                    .args(format_args!("a log record"))
                    .build(),
            )
            .expect("the record is handed on");
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        (text, statements.load(Ordering::Relaxed))
    }

    /// The text log writes a span's fields and an event's as `name=value`
    /// (values as `Debug` writes them, `%` fields as `Display`), the
    /// message bare, one space apart.
    #[test]
    fn the_text_log_writes_name_equals_value() {
        let written = Written::default();
        let writer = written.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(text_fields())
                .with_target(false)
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "http.request",
                http.request.method = %"GET",
                url.path = %"/api/v1/products/7",
                http.response.status_code = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("http.response.status_code", 200);
            tracing::warn!(reason = "a \"quoted\" word", tries = 3, "took long");
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                "http.request{http.request.method=GET url.path=/api/v1/products/7 \
                 http.response.status_code=200}: took long reason=\"a \\\"quoted\\\" word\" tries=3"
            ),
            "{text}"
        );
    }

    /// The statement layer gets every statement event; the log shows what
    /// the directives ask for and nothing more, with its span, both with
    /// one global filter (targets and levels) and with per-layer filters
    /// (span directives).
    #[test]
    fn statements_reach_their_layer_and_the_log_only_when_asked_for() {
        for directives in [LogDirectives::DEFAULT, "info,sqlx=warn,[other]=debug"] {
            let (log, statements) = logged_and_counted(directives);
            assert_eq!(statements, 1, "{directives}: {log}");
            assert!(log.contains("a line at info"), "{directives}: {log}");
            assert!(log.contains("url.path"), "{directives}: the span: {log}");
            assert!(!log.contains("a line at debug"), "{directives}: {log}");
            assert!(!log.contains("a statement"), "{directives}: {log}");
        }
        for directives in ["info,sqlx=trace", "info,sqlx=trace,[other]=debug"] {
            let (log, statements) = logged_and_counted(directives);
            assert_eq!(statements, 1, "{directives}: {log}");
            assert!(log.contains("a statement"), "{directives}: {log}");
            assert!(!log.contains("a line at debug"), "{directives}: {log}");
            assert!(!log.contains("a log record"), "{directives}: {log}");
        }
        // A `log` record is judged by its own target, not its callsite's.
        for directives in [
            "info,librdkafka=debug",
            "info,librdkafka=debug,[other]=debug",
        ] {
            let (log, _) = logged_and_counted(directives);
            assert!(log.contains("a log record"), "{directives}: {log}");
            assert!(!log.contains("a line at debug"), "{directives}: {log}");
        }
    }

    #[test]
    fn span_and_field_directives_keep_the_env_filter() {
        for directives in [
            "info,[http.request]=debug",
            "info,orderflow_api[http.request{url.path=/healthz}]=trace",
            "[{order_id}]=debug",
            // EnvFilter turns nothing into "errors only"; Targets into "nothing".
            "",
        ] {
            assert!(
                matches!(LogDirectives::parse(directives), LogDirectives::Dynamic(d) if d == directives),
                "{directives:?} needs EnvFilter"
            );
        }
    }

    #[test]
    fn a_statement_is_labelled_by_its_first_word() {
        assert_eq!(operation_of("SELECT 1"), "select");
        assert_eq!(operation_of("\n  insert INTO t VALUES (1)"), "insert");
        assert_eq!(
            operation_of("RELEASE SAVEPOINT orderflow_chained"),
            "release"
        );
        assert_eq!(operation_of("VACUUM"), "other");
        assert_eq!(operation_of(""), "other");
    }
}
