//! The composition root: settings in, adapters chosen, use cases wired, the
//! HTTP server and the consumer groups started and stopped.
//!
//! `App::build` does everything that can fail at start (connect, migrate,
//! load keys, bootstrap the admin) before anything listens, so a bad setting
//! stops the process with a clear message instead of a half-started server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use orderflow_adapters::providers::{
    SimulatedControls, SimulatedNotifier, SimulatedPayment, SimulatedProviders, SimulationSettings,
    SmtpNotifier, SmtpSettings, WebhookNotifier, WebhookPayment, WebhookSettings,
    notifier_with_breaker, payment_with_breaker,
};
use orderflow_api::extract::TrustedProxies;
use orderflow_api::{AppState, HttpLimits, RateLimits, Services};
use orderflow_core::ports::log::EventLog;
use orderflow_core::ports::providers::{Notifier, PaymentGateway, ProviderControls};
use orderflow_core::ports::rate_limit::{Algorithm, RatePolicy};
use orderflow_core::ports::store::Store;
use orderflow_core::services::admin::Operations;
use orderflow_core::services::auth::{AuthService, AuthSettings};
use orderflow_core::services::carts::CartService;
use orderflow_core::services::catalog::{CacheSettings, CatalogService};
use orderflow_core::services::effects::{Notifiers, RetryPolicy};
use orderflow_core::services::live::LiveHub;
use orderflow_core::services::orders::{OrderService, SideEffects};
use orderflow_core::services::queries::ShopperQueries;
use orderflow_core::services::relay::Relay;
use orderflow_core::services::retention::{self, PruneReport};
use orderflow_domain::notification::Channel;
use orderflow_workers::{ConsumerSettings, WorkerDeps};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backends::Backends;
use crate::keys;
use crate::settings::{CacheMode, Settings, SideEffectsMode, SmtpTls};
use crate::telemetry;

/// Every part of a running orderflow.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn EventLog>,
    pub auth: Arc<AuthService>,
    pub catalog: Arc<CatalogService>,
    pub orders: Arc<OrderService>,
    pub queries: Arc<ShopperQueries>,
    pub operations: Arc<Operations>,
    /// The simulated providers (their controls let a demo or a test change
    /// latency and failure rate at run time). Unused for a channel that has a
    /// real adapter configured.
    pub simulated: SimulatedProviders,
    pub workers: WorkerDeps,
    /// With Kafka: the outbox relay (`orderflow relay`; `serve` runs it too).
    pub relay: Option<Relay>,
    pub state: AppState,
    /// The gauges read from their sources (lag, DLQ, pool, process), which
    /// [`App::run`] and [`App::run_workers`] refresh on a timer.
    pub gauges: telemetry::Gauges,
}

impl App {
    /// Connects, migrates, loads the signing keys, wires the use cases and
    /// bootstraps the admin.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // First, so every series registered while wiring (the catalog's, at
        // zero) lands in it.
        let metrics = telemetry::prometheus();
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating the data dir {}", settings.data_dir.display()))?;
        settings
            .retention()
            .check()
            .map_err(anyhow::Error::msg)
            .context("ORDERFLOW_RETAIN_*")?;
        let backends = Backends::connect(&settings).await?;
        tracing::info!(adapters = %backends.description, "connected");
        let store = backends.store.clone();
        let log = backends.log.clone();

        let key_set = keys::load_or_create(&settings.data_dir, settings.token_format)?;
        let revocations = backends.revocations().await?;
        let auth = Arc::new(AuthService::new(
            store.clone(),
            revocations,
            &key_set,
            AuthSettings {
                token_format: settings.token_format,
                ..AuthSettings::default()
            },
        )?);

        let ttl = Duration::from_secs(settings.cache_ttl_secs);
        let cache = CacheSettings {
            enabled: settings.cache == CacheMode::On,
            ttl,
            ttl_jitter: ttl / 4,
            // Hot entries reload in the last sixth of their life.
            refresh_ahead: ttl / 6,
            ..CacheSettings::default()
        };
        let mut operations = Operations::new(store.clone(), log.clone());
        if let Some(outbox) = backends.outbox.clone() {
            operations = operations.with_outbox(outbox);
        }
        let operations = Arc::new(operations);
        let sharing = backends.live_sharing();
        let mut live = LiveHub::new(store.clone(), auth.clone(), sharing.tickets)
            .with_operations(operations.clone());
        let recheck_ms =
            settings
                .live_recheck_ms
                .unwrap_or(match (sharing.bus.is_some(), backends.embedded) {
                    (true, _) => 30_000,
                    (false, true) => 300_000,
                    (false, false) => 1_000,
                });
        live = live.with_recheck(Duration::from_millis(recheck_ms.max(10)));
        if let Some(bus) = sharing.bus {
            live = live.with_bus(bus);
        }
        if let Some(board) = sharing.presence {
            live = live.with_presence(board);
        }
        let live = Arc::new(live);
        // The catalog rings the `product:{id}` channels after each change.
        let sketches = backends.viewer_sketches(settings.retention().minute_windows);
        let catalog = Arc::new(
            backends
                .catalog(&cache)
                .with_live(live.clone())
                .with_sketches(sketches.clone()),
        );

        let simulated = simulated_providers(&settings);
        let (payment, notifiers) = providers(&settings, &simulated)?;
        let side_effects = match settings.side_effects {
            SideEffectsMode::Events => SideEffects::Events,
            SideEffectsMode::Inline => SideEffects::Inline {
                payment: payment.clone(),
                notifiers: notifiers.clone(),
            },
        };
        let orders = Arc::new(
            OrderService::new(store.clone(), catalog.clone(), side_effects).with_live(live.clone()),
        );
        let carts = Arc::new(CartService::new(
            backends.carts(),
            store.clone(),
            catalog.clone(),
            orders.clone(),
        ));
        let read_models = backends.read_models();
        let mut queries = ShopperQueries::new(store.clone());
        if let Some(read_models) = &read_models {
            queries = queries.with_read_models(read_models.clone());
        }
        let queries = Arc::new(queries);

        let retry = RetryPolicy::new(
            settings.retry_max_attempts.max(1),
            Duration::from_millis(settings.retry_base_ms),
            Duration::from_millis(settings.retry_max_ms),
        );
        let mut workers = WorkerDeps::new(store.clone(), log.clone(), payment, notifiers, retry)
            .with_consumer_settings(ConsumerSettings {
                window: settings.consumer_window,
                group_commit_max: settings.group_commit_max,
                group_commit_interval: Duration::from_millis(settings.group_commit_interval_ms),
                ..ConsumerSettings::default()
            })
            .with_fraud_rules(settings.fraud_rules()?);
        if let Some(read_models) = read_models {
            workers = workers.with_read_models(read_models);
        }
        if let Some(sketches) = sketches {
            workers = workers.with_sketches(sketches);
        }
        // Reservations and releases reach the catalog caches: this process's
        // directly, other processes' over Redis.
        workers = workers.with_catalog(catalog.clone());
        // Order changes made by this process's workers reach its live
        // followers at once; other processes' over the hub's bus (Redis),
        // or at their next recheck without one.
        workers = workers.with_live(live.clone());

        let state = AppState::new(Services {
            store: store.clone(),
            log: log.clone(),
            auth: auth.clone(),
            catalog: catalog.clone(),
            orders: orders.clone(),
            carts,
            provider_controls: provider_controls(&settings, &simulated),
            live,
            queries: queries.clone(),
            operations: operations.clone(),
            metrics,
            limiter: backends.rate_limiter(settings.scale.rate_limit_fail),
            rate_limits: Arc::new(rate_limits(&settings)?),
            http_limits: HttpLimits {
                max_body_bytes: settings.max_body_bytes,
                request_timeout: settings.request_timeout(),
                max_json_depth: settings.max_json_depth,
                max_json_string_chars: settings.max_json_string_chars,
                header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
            },
            trusted_proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
        });

        if let (Some(email), Some(password)) = (&settings.admin_email, &settings.admin_password) {
            auth.ensure_admin(email, password.expose_secret())
                .await
                .context(
                    "bootstrapping the admin from ORDERFLOW_ADMIN_EMAIL / ORDERFLOW_ADMIN_PASSWORD",
                )?;
        }

        let gauges = telemetry::Gauges {
            operations: operations.clone(),
            pool: Some(backends.pool_gauges.clone()),
        };
        Ok(App {
            gauges,
            settings,
            store,
            log,
            auth,
            catalog,
            orders,
            queries,
            operations,
            simulated,
            workers,
            relay: backends.relay,
            state,
        })
    }

    /// The HTTP API.
    pub fn router(&self) -> impl orderflow_api::HttpService {
        orderflow_api::router(self.state.clone())
    }

    /// Binds the configured listen address.
    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        TcpListener::bind(self.settings.listen)
            .await
            .with_context(|| format!("listening on {}", self.settings.listen))
    }

    /// Serves HTTP on `listener` and, when `run_workers`, one member of every
    /// consumer group, until `shutdown` is cancelled. Then the server stops
    /// accepting, finishes in-flight requests, each worker finishes and
    /// commits its batch, and this returns.
    pub async fn run(
        &self,
        listener: TcpListener,
        run_workers: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        tracker.spawn(self.gauges.clone().spawn(shutdown.clone()));
        // Other API processes' catalog updates reach this L1 over Redis.
        if let Some(listener) = self
            .catalog
            .start_invalidation_listener(shutdown.clone())
            .await
        {
            tracker.spawn(async move {
                let _ = listener.await;
            });
        }
        if run_workers {
            for consumer in self
                .workers
                .all_consumers()
                .await
                .context("starting the consumer groups")?
            {
                tracker.spawn(consumer.run(shutdown.clone()));
            }
            // One process runs every role, the relay included.
            if let Some(relay) = self.relay.clone() {
                tracker.spawn(relay.run(shutdown.clone()));
            }
            tracker.spawn(self.prune_on_a_timer(shutdown.clone()));
        }
        // Live streams never end by themselves: close them when told to
        // stop, so the graceful shutdown below can finish and their clients
        // reconnect, with their positions, to a process that stays.
        let (live, stopping) = (self.state.live.clone(), shutdown.clone());
        tracker.spawn(async move {
            stopping.cancelled().await;
            live.stop();
        });
        tracker.spawn(self.catalog.clone().run_view_flusher(
            Duration::from_millis(self.settings.view_flush_ms.max(1)),
            shutdown.clone(),
        ));
        tracker.close();
        let served = serve_http(
            listener,
            self.router(),
            self.state.http_limits.header_read_timeout,
            shutdown.clone(),
        )
        .await
        .context("serving HTTP");
        // The server only returns on shutdown or error; make sure workers stop too.
        shutdown.cancel();
        tracker.wait().await;
        // Every request has finished: the views they counted are all in
        // memory now, and go to the database before the process exits.
        if let Err(error) = self.catalog.flush_views().await {
            tracing::error!(%error, "product views counted since the last flush are lost");
        }
        served
    }

    /// Deletes what retention lets go (see `services::retention`) now,
    /// batch by batch: `orderflow prune`, and the timer.
    pub async fn prune(&self) -> anyhow::Result<PruneReport> {
        let report = retention::prune(
            &self.store,
            &self.settings.retention(),
            &orderflow_workers::GROUP_TOPICS,
        )
        .await?;
        tracing::info!(?report, "pruned what retention lets go");
        Ok(report)
    }

    /// Prunes every `ORDERFLOW_PRUNE_INTERVAL_SECS` (never with 0) until
    /// `shutdown`: in the processes that run consumer groups, which a
    /// deployment always has. A failed pass is logged and tried again at
    /// the next tick.
    fn prune_on_a_timer(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let interval = Duration::from_secs(self.settings.prune_interval_secs);
        let (store, retention) = (self.store.clone(), self.settings.retention());
        async move {
            if interval.is_zero() {
                return;
            }
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match retention::prune(&store, &retention, &orderflow_workers::GROUP_TOPICS).await {
                    Ok(report) if report.total() > 0 => {
                        tracing::info!(?report, "pruned what retention lets go");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "pruning failed; trying again at the next tick")
                    }
                }
            }
        }
    }

    /// Runs only the outbox relay (`orderflow relay`), until `shutdown`.
    pub async fn run_relay(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = self.relay.clone().context(
            "the relay only runs with Kafka: set ORDERFLOW_KAFKA_BROKERS \
             (with the embedded log, events need no relay)",
        )?;
        let tracker = self.headless_role(&shutdown).await?;
        tracker.spawn(relay.run(shutdown));
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// Runs only consumer groups (`orderflow worker GROUP…`), until `shutdown`.
    pub async fn run_workers(
        &self,
        groups: &[String],
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tracker = self.headless_role(&shutdown).await?;
        let consumers = self
            .workers
            .consumers(groups)
            .await
            .with_context(|| format!("starting groups {}", groups.join(", ")))?;
        for consumer in consumers {
            tracker.spawn(consumer.run(shutdown.clone()));
        }
        tracker.spawn(self.prune_on_a_timer(shutdown.clone()));
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// What a role without the HTTP API (worker, relay) runs beside its
    /// work: the gauge refresher and, with `ORDERFLOW_METRICS_LISTEN`, its
    /// own `/metrics` for Prometheus to scrape.
    async fn headless_role(&self, shutdown: &CancellationToken) -> anyhow::Result<TaskTracker> {
        let tracker = TaskTracker::new();
        tracker.spawn(self.gauges.clone().spawn(shutdown.clone()));
        if let Some(address) = self.settings.metrics_listen {
            let listener = TcpListener::bind(address).await.with_context(|| {
                format!("listening for /metrics on {address} (ORDERFLOW_METRICS_LISTEN)")
            })?;
            tracing::info!(address = %listener.local_addr()?, "serving /metrics");
            let router = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(orderflow_api::observe::metrics_endpoint),
                )
                .route("/healthz", axum::routing::get(|| async { "ok" }))
                .with_state(self.state.clone());
            let timeout = self.state.http_limits.header_read_timeout;
            let stop = shutdown.clone();
            tracker.spawn(async move {
                if let Err(error) = serve_http(listener, router, timeout, stop).await {
                    tracing::error!(%error, "the /metrics listener stopped");
                }
            });
        }
        Ok(tracker)
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight
/// requests finish.
///
/// This is `axum::serve` plus what it does not expose: a deadline for the
/// request line and headers (HTTP/1), so a slow client that trickles a
/// request byte by byte (slow-loris) is disconnected after
/// `header_read_timeout` instead of holding a connection forever. Bodies are
/// covered by the router's request timeout (408). Sockets are
/// `TCP_NODELAY`.
async fn serve_http(
    listener: TcpListener,
    router: impl orderflow_api::HttpService,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Responses and live frames go out as written: with Nagle's
        // algorithm a small write behind an unacknowledged one waits for
        // the peer's (delayed, up to 40 ms) acknowledgement.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "TCP_NODELAY not set");
        }
        let service = ConnectionService {
            api: router.clone(),
            peer,
        };
        // Each connection its own timer: one alarm for all its heads.
        let mut builder = builder.clone();
        builder
            .http1()
            .timer(orderflow_api::header_deadline::ConnectionTimer::new());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What hyper calls for each request of one connection: the API, with the
/// peer's address in the request (`ConnectInfo`).
///
/// Written for hyper, not adapted from tower (`TowerToHyperService` over a
/// `map_request`): that wraps every request's future in two more state
/// machines and asks the stack whether it is ready, which it always is
/// ([`orderflow_api::HttpService`]).
struct ConnectionService<S> {
    api: S,
    peer: std::net::SocketAddr,
}

impl<S: orderflow_api::HttpService>
    hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for ConnectionService<S>
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = S::Future;

    fn call(&self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let mut request = request.map(axum::body::Body::new);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let mut api = self.api.clone();
        debug_assert!(
            api.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_ready(),
            "the API's stack is always ready"
        );
        api.call(request)
    }
}

fn simulated_providers(settings: &Settings) -> SimulatedProviders {
    let p = &settings.providers;
    let sim = |latency_ms: u64, failure_rate: f64| {
        SimulationSettings::new(
            Duration::from_millis(latency_ms),
            failure_rate.clamp(0.0, 1.0),
        )
    };
    SimulatedProviders {
        email: Arc::new(SimulatedNotifier::new(
            Channel::Email,
            sim(p.sim_email_latency_ms, p.sim_email_failure_rate),
        )),
        sms: Arc::new(SimulatedNotifier::new(
            Channel::Sms,
            sim(p.sim_sms_latency_ms, p.sim_sms_failure_rate),
        )),
        push: Arc::new(SimulatedNotifier::new(
            Channel::Push,
            sim(p.sim_push_latency_ms, p.sim_push_failure_rate),
        )),
        payment: Arc::new(SimulatedPayment::new(
            sim(p.sim_payment_latency_ms, p.sim_payment_failure_rate),
            p.sim_payment_decline_above_cents,
        )),
    }
}

/// Real adapters where configured, the simulated provider elsewhere; each
/// behind its circuit breaker (`ORDERFLOW_BREAKERS`).
/// The console's knobs over the simulated providers in use (none when
/// every provider is a real one).
fn provider_controls(
    settings: &Settings,
    simulated: &SimulatedProviders,
) -> Option<Arc<dyn ProviderControls>> {
    let p = &settings.providers;
    let in_use: Vec<&'static str> = [
        ("email", p.smtp_host.is_none()),
        ("sms", p.sms_webhook_url.is_none()),
        ("push", p.push_webhook_url.is_none()),
        ("payment", p.payment_webhook_url.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, simulated)| simulated.then_some(name))
    .collect();
    (!in_use.is_empty()).then(|| {
        Arc::new(SimulatedControls::new(simulated.clone(), in_use)) as Arc<dyn ProviderControls>
    })
}

fn providers(
    settings: &Settings,
    simulated: &SimulatedProviders,
) -> anyhow::Result<(Arc<dyn PaymentGateway>, Notifiers)> {
    let p = &settings.providers;
    let webhook = |url: &str| {
        let mut s = WebhookSettings::new(url);
        if let Some(token) = &p.webhook_token {
            s = s.with_bearer_token(token.clone());
        }
        s
    };
    let email: Arc<dyn Notifier> = match &p.smtp_host {
        Some(host) => {
            let tls = match p.smtp_tls {
                SmtpTls::None => orderflow_adapters::providers::SmtpTls::None,
                SmtpTls::Starttls => orderflow_adapters::providers::SmtpTls::StartTls,
                SmtpTls::Tls => orderflow_adapters::providers::SmtpTls::Tls,
            };
            let mut smtp = SmtpSettings::new(host.clone(), p.smtp_port, tls, p.smtp_from.clone());
            if let (Some(user), Some(password)) = (&p.smtp_username, &p.smtp_password) {
                smtp = smtp.with_credentials(user.clone(), password.clone());
            }
            Arc::new(SmtpNotifier::new(smtp).context("configuring SMTP")?)
        }
        None => simulated.email.clone(),
    };
    let sms: Arc<dyn Notifier> = match &p.sms_webhook_url {
        Some(url) => Arc::new(
            WebhookNotifier::new(Channel::Sms, webhook(url))
                .context("configuring the SMS webhook")?,
        ),
        None => simulated.sms.clone(),
    };
    let push: Arc<dyn Notifier> = match &p.push_webhook_url {
        Some(url) => Arc::new(
            WebhookNotifier::new(Channel::Push, webhook(url))
                .context("configuring the push webhook")?,
        ),
        None => simulated.push.clone(),
    };
    let payment: Arc<dyn PaymentGateway> = match &p.payment_webhook_url {
        Some(url) => {
            Arc::new(WebhookPayment::new(webhook(url)).context("configuring the payment webhook")?)
        }
        None => simulated.payment.clone(),
    };
    let breakers = &p.breakers;
    Ok((
        payment_with_breaker(breakers, payment),
        Notifiers::new(
            notifier_with_breaker(breakers, email),
            notifier_with_breaker(breakers, sms),
            notifier_with_breaker(breakers, push),
        ),
    ))
}

fn rate_limits(settings: &Settings) -> anyhow::Result<RateLimits> {
    let bucket = |name: &str, per_sec: f64, burst_factor: f64| {
        (per_sec > 0.0).then(|| RatePolicy {
            name: name.to_owned(),
            algorithm: Algorithm::TokenBucket {
                capacity: (per_sec * burst_factor).ceil().max(1.0) as u32,
                refill_per_second: per_sec,
            },
        })
    };
    Ok(RateLimits::new(
        bucket("auth", settings.auth_rate_per_sec, 10.0),
        bucket("general", settings.rate_per_sec, 2.0),
        orderflow_api::limits::parse_spec(&settings.rate_limits)
            .map_err(|e| anyhow::anyhow!("ORDERFLOW_RATE_LIMITS: {e}"))?,
    ))
}
