//! Observability, end to end, against a real `orderflow serve` process (the
//! binary, so its telemetry is installed exactly as in production and no
//! other test shares its metrics recorder):
//!
//! - `/metrics` after real orders: names and labels follow Prometheus
//!   conventions, and the counters moved by exactly what the flow did;
//! - a real Prometheus scrapes it with the shipped `deploy/` config and
//!   rules; every alert rule and every dashboard panel query is evaluated
//!   through Prometheus' HTTP API and must not fail; `promtool` accepts the
//!   config and the rules;
//! - an in-test OTLP/HTTP collector receives the spans, and one order's
//!   trace holds the API request and the handling span of every consumer group.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderflow_testkit::{ServerProcess, find_program, free_port, wait_for_port};
use serde_json::{Value, json};

const DEMO_EMAIL: &str = "alice@example.com";
const DEMO_PASSWORD: &str = "orderflow-demo-2026";

// ---------------------------------------------------------------- harness

/// One `orderflow serve --demo` process on a free port, with its own data dir.
struct Orderflow {
    base: String,
    port: u16,
    http: reqwest::Client,
    _server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Orderflow {
    /// Starts the binary with instant simulated providers and no rate
    /// limits; `env` adds variables (the OTLP endpoint).
    async fn start(env: &[(&str, String)]) -> Orderflow {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut args: Vec<OsString> = env
            .iter()
            .map(|(k, v)| OsString::from(format!("{k}={v}")))
            .collect();
        args.push(env!("CARGO_BIN_EXE_orderflow").into());
        let listen = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let first = ["--data-dir", data.to_str().unwrap(), "--listen", &listen];
        for arg in first.into_iter().chain(support::INSTANT_PROVIDERS).chain([
            "--rate-limits",
            "off",
            "--auth-rate-per-sec",
            "0",
            "--rate-per-sec",
            "0",
            // One shopper places an order every half second while Prometheus
            // scrapes: the standard fraud rules would hold them.
            "--fraud-max-orders",
            "1000000",
            "serve",
            "--demo",
        ]) {
            args.push(arg.into());
        }
        let server = ServerProcess::spawn(
            "orderflow",
            Path::new("/usr/bin/env"),
            &args,
            None,
            dir.path(),
            &dir.path().join("orderflow.log"),
            "TERM",
        )
        .expect("orderflow starts");
        let ready =
            tokio::task::spawn_blocking(move || wait_for_port(port, Duration::from_secs(60)))
                .await
                .unwrap();
        let app = Orderflow {
            base: format!("http://127.0.0.1:{port}"),
            port,
            http: reqwest::Client::new(),
            _server: server,
            dir,
        };
        if let Err(error) = ready {
            panic!("orderflow did not listen: {error}\n{}", app.log());
        }
        app
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orderflow.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET {path}`, as `token` when given, read as JSON whatever the status.
    async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn login(&self) -> String {
        let answer: Value = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD}))
            .send()
            .await
            // The server's log says why it stopped answering (one CI run saw
            // "connection refused" here after the port had been open).
            .unwrap_or_else(|error| panic!("login request failed: {error}\n{}", self.log()))
            .error_for_status()
            .expect("demo shopper logs in")
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// Places `count` one-line orders and waits until each is confirmed.
    async fn place_confirmed_orders(&self, count: usize) -> Vec<String> {
        let token = self.login().await;
        let page = self.get_json("/api/v1/products?limit=100", None).await;
        // The best-stocked product, so repeated orders never run it out.
        let product = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|p| p["stock"].as_i64().unwrap_or(0))
            .and_then(|p| p["id"].as_str())
            .unwrap()
            .to_owned();
        let mut ids = Vec::new();
        for _ in 0..count {
            let placed = self
                .http
                .post(self.url("/api/v1/orders"))
                .bearer_auth(&token)
                .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(placed.status(), 201, "order placed");
            let order: Value = placed.json().await.unwrap();
            ids.push(order["id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let order = self
                    .get_json(&format!("/api/v1/orders/{id}"), Some(&token))
                    .await;
                if order["status"] == "confirmed" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "order {id} not confirmed in time: {order}\n{}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ids
    }

    async fn scrape(&self) -> Metrics {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Metrics::parse(&response.text().await.unwrap())
    }

    /// Scrapes until every consumer group has caught up (lag 0 everywhere).
    async fn scrape_when_drained(&self) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = self.scrape().await;
            let lag = metrics.sum("orderflow_consumer_group_lag", &[]);
            let groups = metrics.series("orderflow_consumer_group_lag").count();
            if lag == 0.0 && groups == orderflow_workers::GROUPS.len() {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "consumers did not catch up (lag {lag})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A parsed Prometheus text exposition.
struct Metrics {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Metrics { types, samples }
    }

    fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.samples.iter().filter(move |(n, _, _)| n == name)
    }

    /// The sum of every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|(_, l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---------------------------------------------------------------- (a) /metrics

#[tokio::test]
async fn metrics_follow_prometheus_conventions_and_count_the_flow_exactly() {
    let app = Orderflow::start(&[]).await;
    let before = app.scrape_when_drained().await;
    const ORDERS: usize = 3;
    app.place_confirmed_orders(ORDERS).await;
    let after = app.scrape_when_drained().await;
    let n = ORDERS as f64;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    // Names and labels.
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    for (name, kind) in &after.types {
        assert!(name_ok(name), "metric name {name} is not snake_case");
        assert!(
            name.starts_with("orderflow_") || name.starts_with("process_"),
            "{name} lacks the orderflow_ namespace"
        );
        for unit in ["_ms", "_milliseconds", "_micros", "_kb", "_mb", "_minutes"] {
            assert!(!name.contains(unit), "{name} is not in base units");
        }
        match kind.as_str() {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "histogram {name} must name its base unit"
            ),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "gauge {name} must not end in _total"
            ),
            other => panic!("{name} has unexpected type {other}"),
        }
    }
    let uuid_like = |s: &str| s.split('/').any(|seg| uuid::Uuid::parse_str(seg).is_ok());
    for (name, labels, _) in &after.samples {
        for (key, value) in labels {
            assert!(
                name_ok(key),
                "{name} has label {key} that is not snake_case"
            );
            assert!(
                !uuid_like(value),
                "{name}{{{key}={value}}}: ids must never be label values"
            );
        }
    }
    // Routes are templates.
    assert!(
        after.sum(
            "orderflow_http_requests_total",
            &[("route", "/api/v1/orders/{id}")]
        ) >= n,
        "GET /orders/{{id}} counted under its template"
    );
    // Buckets resolve 100 µs to 10 s.
    let buckets: Vec<String> = after
        .series("orderflow_http_request_duration_seconds_bucket")
        .filter_map(|(_, l, _)| l.get("le").cloned())
        .collect();
    for le in ["0.0001", "10"] {
        assert!(
            buckets.iter().any(|b| b == le),
            "bucket le={le} missing: {buckets:?}"
        );
    }

    // Every family the issue asks for is exported.
    for name in [
        "orderflow_http_requests_total",
        "orderflow_http_request_duration_seconds_bucket",
        "orderflow_http_requests_in_flight",
        "orderflow_cache_hits_total",
        "orderflow_cache_misses_total",
        "orderflow_cache_loads_total",
        "orderflow_db_queries_total",
        "orderflow_db_query_duration_seconds_bucket",
        "orderflow_db_pool_connections",
        "orderflow_events_published_total",
        "orderflow_events_consumed_total",
        "orderflow_consumer_lag",
        "orderflow_dead_letters",
        "orderflow_event_end_to_end_seconds_bucket",
        "orderflow_orders_total",
        "orderflow_logins_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            after.series(name).next().is_some(),
            "{name} is not exported"
        );
    }
    assert!(after.sum("process_resident_memory_bytes", &[]) > 1e6);
    assert!(after.sum("process_open_fds", &[]) >= 3.0);
    let lag_labels = &after.series("orderflow_consumer_lag").next().unwrap().1;
    for key in ["group", "topic", "partition"] {
        assert!(
            lag_labels.contains_key(key),
            "orderflow_consumer_lag lacks {key}"
        );
    }

    // The counters moved by exactly what the flow did.
    assert_eq!(
        delta(
            "orderflow_http_requests_total",
            &[
                ("route", "/api/v1/orders"),
                ("method", "POST"),
                ("status", "201"),
                ("status_class", "2xx")
            ]
        ),
        n
    );
    assert_eq!(
        delta(
            "orderflow_http_request_duration_seconds_count",
            &[("route", "/api/v1/orders"), ("method", "POST")]
        ),
        n
    );
    assert_eq!(delta("orderflow_orders_total", &[("status", "placed")]), n);
    assert_eq!(delta("orderflow_logins_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(
        delta(
            "orderflow_events_published_total",
            &[("topic", "stock.events")]
        ),
        n
    );
    assert_eq!(
        delta(
            "orderflow_events_published_total",
            &[("topic", "payment.events")]
        ),
        n
    );
    assert_eq!(
        delta(
            "orderflow_events_consumed_total",
            &[
                ("group", "inventory"),
                ("topic", "order.events"),
                ("outcome", "applied")
            ]
        ),
        n
    );
    assert_eq!(
        delta(
            "orderflow_events_consumed_total",
            &[("group", "payment"), ("outcome", "applied")]
        ),
        n
    );
    // orders: the stock result and the payment result of each order.
    assert_eq!(
        delta(
            "orderflow_events_consumed_total",
            &[("group", "orders"), ("outcome", "applied")]
        ),
        2.0 * n
    );
    for group in ["email", "sms", "push", "loyalty", "analytics"] {
        assert_eq!(
            delta(
                "orderflow_event_end_to_end_seconds_count",
                &[("group", group)]
            ),
            n,
            "end-to-end observations of {group}"
        );
    }
    assert_eq!(
        delta(
            "orderflow_events_consumed_total",
            &[("outcome", "dead_lettered")]
        ),
        0.0
    );
    assert_eq!(after.sum("orderflow_dead_letters", &[]), 0.0);
    assert!(delta("orderflow_db_queries_total", &[]) > n);
    assert!(
        delta(
            "orderflow_db_query_duration_seconds_count",
            &[("operation", "insert")]
        ) >= n
    );
    assert!(after.sum("orderflow_http_requests_in_flight", &[]) >= 0.0);
}

// ---------------------------------------------------------------- (b) Prometheus

/// Prometheus' HTTP API at `base`.
struct Prometheus {
    http: reqwest::Client,
    base: String,
}

impl Prometheus {
    /// `GET {path}?{query}`, which must succeed.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let Prometheus { http, base } = self;
        let response = http
            .get(format!("{base}{path}"))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(
            status.is_success() && body["status"] == "success",
            "Prometheus {path} {query:?} failed: {status} {body}"
        );
        body
    }

    /// An instant query (`/api/v1/query`), which must succeed.
    async fn query(&self, query: &str) -> Value {
        self.get("/api/v1/query", &[("query", query)]).await
    }
}

fn promtool(args: &[&str]) {
    let promtool = find_program("promtool", &[], "apt-get install prometheus").unwrap();
    let output = std::process::Command::new(&promtool)
        .args(args)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn prometheus_scrapes_orderflow_and_every_alert_and_panel_query_evaluates() {
    let deploy = workspace_root().join("deploy");
    let config = deploy.join("prometheus/prometheus.yml");
    let rules = deploy.join("prometheus/alerts.yml");
    promtool(&["check", "config", config.to_str().unwrap()]);
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    // The rules' unit tests: series fed in, alerts expected to fire or not.
    let rule_tests = deploy.join("prometheus/alerts_test.yml");
    promtool(&["test", "rules", rule_tests.to_str().unwrap()]);

    let app = Orderflow::start(&[]).await;
    app.place_confirmed_orders(2).await;

    // The shipped config, pointed at this process, scraping and evaluating
    // every second. The worker job keeps a target nobody serves, so
    // `OrderflowTargetDown` has something to find.
    let work = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(&config).unwrap();
    assert!(shipped.contains("localhost:8080") && shipped.contains("localhost:9464"));
    let local = shipped
        .replace("localhost:8080", &format!("127.0.0.1:{}", app.port))
        .replace("localhost:9464", &format!("127.0.0.1:{}", free_port()))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(work.path().join("prometheus.yml"), local).unwrap();
    std::fs::copy(&rules, work.path().join("alerts.yml")).unwrap();
    let prometheus_bin = find_program("prometheus", &[], "apt-get install prometheus").unwrap();
    let port = free_port();
    let args: Vec<OsString> = vec![
        format!(
            "--config.file={}",
            work.path().join("prometheus.yml").display()
        )
        .into(),
        format!("--storage.tsdb.path={}", work.path().join("tsdb").display()).into(),
        format!("--web.listen-address=127.0.0.1:{port}").into(),
        "--log.level=warn".into(),
    ];
    let _prometheus = ServerProcess::spawn(
        "prometheus",
        &prometheus_bin,
        &args,
        None,
        work.path(),
        &work.path().join("prometheus.log"),
        "TERM",
    )
    .unwrap();
    let log = work.path().join("prometheus.log");
    tokio::task::spawn_blocking(move || wait_for_port(port, Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let prometheus = Prometheus {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };

    // Let it scrape a few times while traffic goes on, so rates have samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        app.place_confirmed_orders(1).await;
        let up = prometheus
            .query("count_over_time(up{job=\"orderflow-api\"}[1m])")
            .await;
        let scrapes = up["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if scrapes >= 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape orderflow: {up}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let api_up = prometheus.query("up{job=\"orderflow-api\"}").await;
    assert_eq!(
        api_up["data"]["result"][0]["value"][1], "1",
        "the api target is up: {api_up}"
    );

    // Every alert rule: loaded, evaluated by Prometheus without error, and
    // its expression answered by the query API.
    let loaded = prometheus.get("/api/v1/rules", &[]).await;
    let mut alerts = Vec::new();
    for group in loaded["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} evaluated with an error: {rule}",
                rule["name"]
            );
            let query = rule["query"].as_str().unwrap();
            prometheus.query(query).await;
            alerts.push(rule["name"].as_str().unwrap().to_owned());
        }
    }
    for name in [
        "OrderflowTargetDown",
        "OrderflowHighErrorRate",
        "OrderflowHighLatencyP99",
        "OrderflowConsumerLagHigh",
        "OrderflowDeadLettersGrowing",
        "OrderflowOutboxBacklogGrowing",
        "OrderflowCircuitBreakerOpen",
        "OrderflowFraudAlertsHigh",
    ] {
        assert!(
            alerts.iter().any(|a| a == name),
            "alert {name} is not loaded: {alerts:?}"
        );
    }
    // The dead worker target is noticed (pending, since `for: 2m`).
    let down = prometheus.query("up{job=~\"orderflow.*\"} == 0").await;
    assert_eq!(
        down["data"]["result"].as_array().unwrap().len(),
        1,
        "{down}"
    );

    // Every dashboard panel query, with Grafana's interval variable filled in.
    let mut panels = 0;
    let mut with_data = BTreeMap::new();
    for entry in std::fs::read_dir(deploy.join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "30s");
                assert!(!expr.contains('$'), "unresolved variable in {expr}");
                let answer = prometheus.query(&expr).await;
                let rows = answer["data"]["result"].as_array().map_or(0, Vec::len);
                with_data.insert(
                    format!("{} / {}", dashboard["title"], panel["title"]),
                    rows > 0,
                );
                panels += 1;
            }
        }
    }
    assert!(panels >= 20, "only {panels} panel queries found");
    for must in [
        "\"orderflow / overview\" / \"Requests per second by route\"",
        "\"orderflow / overview\" / \"Latency p50 / p95 / p99\"",
        "\"orderflow / overview\" / \"Orders per second by outcome\"",
        "\"orderflow / consumers\" / \"Lag per group\"",
        "\"orderflow / consumers\" / \"Events consumed per second by group and outcome\"",
        "\"orderflow / cache\" / \"Hit ratio per layer\"",
        "\"orderflow / database\" / \"Statement latency p95 by operation\"",
        "\"orderflow / database\" / \"Pool connections in use / idle\"",
    ] {
        assert_eq!(
            with_data.get(must),
            Some(&true),
            "panel {must} shows no data: {with_data:#?}"
        );
    }
}

// ---------------------------------------------------------------- (c) traces

/// What the in-test collector received: every span, flattened.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ReceivedSpan>>>);

#[derive(Clone, Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// The `http.route` attribute, if the span has one.
    route: Option<String>,
}

/// A minimal OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, as the OpenTelemetry collector accepts it.
async fn start_collector() -> (String, Received) {
    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use prost::Message as _;

    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => request,
                    Err(error) => {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            error.to_string().into_bytes(),
                        );
                    }
                };
                let mut spans = sink.0.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let route = span
                                .attributes
                                .iter()
                                .find(|kv| kv.key == "http.route")
                                .and_then(|kv| kv.value.as_ref())
                                .map(|v| format!("{:?}", v.value));
                            spans.push(ReceivedSpan {
                                service: service.clone(),
                                route,
                                name: span.name,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                            });
                        }
                    }
                }
                (
                    axum::http::StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, received)
}

#[tokio::test]
async fn one_orders_trace_spans_the_api_and_every_consumer_group() {
    let (collector, received) = start_collector().await;
    let app = Orderflow::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    let ids = app.place_confirmed_orders(1).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = received.0.lock().unwrap().clone();
        let request = spans.iter().find(|s| s.name == "POST /api/v1/orders");
        if let Some(request) = request {
            assert!(
                request.service.contains("orderflow-serve"),
                "service.name: {}",
                request.service
            );
            assert!(
                request
                    .route
                    .as_deref()
                    .is_some_and(|r| r.contains("\"/api/v1/orders\"")),
                "http.route: {:?}",
                request.route
            );
            let trace: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == request.trace_id)
                .collect();
            // Every group but `trending`, which reads product views, not
            // the order's events.
            let missing: Vec<&str> = orderflow_workers::GROUPS
                .iter()
                .filter(|group| **group != "trending")
                .filter(|group| {
                    !trace
                        .iter()
                        .any(|s| s.name.ends_with(&format!(" process {group}")))
                })
                .copied()
                .collect();
            let has_db = trace.iter().any(|s| s.name.starts_with("db "));
            if missing.is_empty() && has_db {
                // The first consumer continues the request span itself.
                let inventory = trace
                    .iter()
                    .find(|s| s.name == "order.events process inventory")
                    .expect("inventory handled order.placed");
                assert_eq!(
                    inventory.parent_span_id, request.span_id,
                    "inventory's span is a child of the request"
                );
                let db = trace.iter().find(|s| s.name.starts_with("db ")).unwrap();
                assert!(
                    trace.iter().any(|s| s.span_id == db.parent_span_id),
                    "database spans hang under a span of the same trace"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "order {ids:?}: trace lacks the groups {missing:?} (db spans: {has_db}); spans of the trace: {:?}",
                trace.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "no span of POST /api/v1/orders arrived; got {:?}\n{}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                app.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
