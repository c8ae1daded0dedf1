//! The commands. Each builds the [`App`] from the same settings, so every
//! command sees the same database and event log.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use orderflow_core::ports::store::Rebuildable;

use crate::app::App;
use crate::keys;
use crate::seed;
use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    args_override_self = true,
    about = "Event-driven order platform: HTTP API, catalog cache, consumer groups over an event log"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

/// The groups `orderflow rebuild` knows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RebuildGroup {
    /// Revenue: sales per day and product, and the sales windows.
    Analytics,
    /// The fraud check's remembered orders.
    Fraud,
    /// Product views per product and per minute (the trending rankings).
    Trending,
}

impl From<RebuildGroup> for Rebuildable {
    fn from(group: RebuildGroup) -> Self {
        match group {
            RebuildGroup::Analytics => Rebuildable::Analytics,
            RebuildGroup::Fraud => Rebuildable::Fraud,
            RebuildGroup::Trending => Rebuildable::Trending,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: the HTTP API and one member of every consumer group.
    Serve {
        /// Seed a demo catalog and demo shoppers when the database is empty.
        #[arg(long)]
        demo: bool,
    },
    /// Only the HTTP API.
    Api,
    /// Only consumer groups (all of them when none is named).
    Worker {
        /// fraud, inventory, payment, orders, email, sms, push, loyalty, analytics, trending
        groups: Vec<String>,
    },
    /// Throw a stream processor's state away and build it again from the
    /// log: rewinds the group's offsets, deletes its state and processed
    /// marks, and replays its topics until the group has caught up. Stop
    /// every process running the group first (refused on PostgreSQL and
    /// Kafka while one runs; SQLite cannot tell).
    Rebuild {
        /// The group whose state to rebuild.
        group: RebuildGroup,
        /// Rebuild only the windows from this day (UTC, `YYYY-MM-DD`) on,
        /// replaying the events since: earlier days keep their state. The
        /// log must still hold the day's events.
        #[arg(long, value_name = "DAY")]
        from: Option<chrono::NaiveDate>,
        /// Rewind even when the log lists members of the group: for members
        /// known to be gone that it still lists (a lease not yet expired, a
        /// broker that does not expire members).
        #[arg(long)]
        force: bool,
    },
    /// Only the outbox relay: publishes committed events to Kafka (needs ORDERFLOW_KAFKA_BROKERS).
    Relay,
    /// Apply database migrations (and create missing Kafka topics) and exit.
    Migrate,
    /// Seed the demo catalog and shoppers (existing ones are left alone).
    Seed,
    /// Load products in bulk from a CSV file (header sku,name,price_cents,currency,stock) or JSON lines; existing SKUs are replaced.
    Import {
        /// The file: .csv, or .jsonl / .ndjson / .json (one object per line).
        file: std::path::PathBuf,
    },
    /// Each consumer group: committed offset, end offset and lag per partition.
    Consumers,
    /// Delete now what retention lets go (`ORDERFLOW_RETAIN_*`): old events
    /// every group is past, processed marks, idempotency keys, sent outbox
    /// rows, replayed dead letters. The worker processes also do it on a timer.
    Prune,
    /// Measure v1 (no cache, inline side effects) against v2 (cache, events) on this machine.
    Bench(Box<orderflow_bench::BenchArgs>),
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The access-token signing keys in the data dir (a running server reads them at start).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// kid, algorithm, creation time and which key signs; never the secrets.
    List,
    /// Add a key that signs from now on; old keys keep verifying until their
    /// tokens expire. Then send the server SIGHUP (or restart it).
    Rotate {
        /// eddsa (Ed25519 JWTs), hs256 (HMAC-SHA256 JWTs) or v4.public
        /// (PASETO); by default the token format's own (eddsa for jwt,
        /// v4.public for paseto).
        #[arg(long)]
        alg: Option<orderflow_core::services::auth::KeyAlgorithm>,
    },
    /// Drop keys that stopped signing longer ago than the access-token TTL + skew.
    Prune,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first.
    List {
        /// Include the ones already replayed.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One dead letter with its original event.
    Show { id: uuid::Uuid },
    /// Put the original event back on its topic.
    Replay { id: uuid::Uuid },
}

impl Command {
    /// The process's role, as traces name it (`orderflow-<role>`).
    pub fn role(&self) -> &'static str {
        match self {
            Command::Serve { .. } => "serve",
            Command::Api => "api",
            Command::Worker { .. } => "worker",
            Command::Relay => "relay",
            _ => "cli",
        }
    }
}

/// The async runtime for `cli`: tokio's default, except for `orderflow
/// bench`, whose load generator runs below the servers' priority
/// (`orderflow_bench::priority`, `BenchArgs::effective_generator_nice`).
pub fn runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let nice = match &cli.command {
        Command::Bench(args) => args.effective_generator_nice(),
        _ => 0,
    };
    orderflow_bench::priority::runtime(nice)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The bench starts its own servers (this same binary) with fresh data dirs.
    if let Command::Bench(args) = &cli.command {
        if let (Some(listen), Some(body)) = (&args.bare_listener, &args.bare_body) {
            orderflow_bench::ceiling::serve_bare(listen, body).await?;
            return Ok(());
        }
        let binary = std::env::current_exe()?;
        orderflow_bench::run(args, binary).await?;
        return Ok(());
    }
    // Key commands touch only the key file: no database, no server.
    if let Command::Keys { command } = &cli.command {
        return keys_command(&cli.settings, command);
    }
    let app = App::build(cli.settings).await?;
    match cli.command {
        Command::Serve { demo } => {
            if demo && let Some(report) = seed::seed_if_empty(&app).await? {
                println!(
                    "seeded {} demo products and {} demo shoppers (password: {})",
                    report.products_created,
                    report.shoppers_created,
                    seed::DEMO_PASSWORD
                );
            }
            let listener = app.bind().await?;
            print_urls(&listener)?;
            keys::reload_on_sighup(app.auth.clone(), app.settings.data_dir.clone());
            app.run(listener, true, shutdown_on_signal()).await?;
            println!("orderflow stopped cleanly");
        }
        Command::Api => {
            let listener = app.bind().await?;
            print_urls(&listener)?;
            keys::reload_on_sighup(app.auth.clone(), app.settings.data_dir.clone());
            app.run(listener, false, shutdown_on_signal()).await?;
        }
        Command::Worker { groups } => {
            let groups = if groups.is_empty() {
                orderflow_workers::GROUPS
                    .iter()
                    .map(|g| g.to_string())
                    .collect()
            } else {
                groups
            };
            println!("running consumer groups: {}", groups.join(", "));
            app.run_workers(&groups, shutdown_on_signal()).await?;
        }
        Command::Relay => {
            println!("relaying the outbox to Kafka");
            app.run_relay(shutdown_on_signal()).await?;
        }
        Command::Migrate => println!(
            "database is migrated: {}",
            redact_url(&app.settings.database_url())
        ),
        Command::Seed => {
            let report = seed::seed(&app).await?;
            println!(
                "seeded {} products and {} shoppers (demo password: {})",
                report.products_created,
                report.shoppers_created,
                seed::DEMO_PASSWORD
            );
        }
        Command::Import { file } => {
            let report = crate::import::import_file(&app, &file).await?;
            println!(
                "imported {} products from {}: {} new, {} updated",
                report.inserted + report.updated,
                file.display(),
                report.inserted,
                report.updated
            );
        }
        Command::Consumers => print_consumers(&app).await?,
        Command::Rebuild { group, force, from } => {
            let what = group.into();
            match from {
                None => println!(
                    "rebuilding {}: offsets rewound, state deleted, replaying from the beginning of the log",
                    Rebuildable::group(what)
                ),
                Some(day) => println!(
                    "rebuilding {} from {day}: offsets rewound to that day, its windows and later ones deleted, replaying",
                    Rebuildable::group(what)
                ),
            }
            let report = orderflow_workers::rebuild::rebuild(
                &app.workers,
                what,
                force,
                from,
                |replayed, lag| {
                    println!("  {replayed} events replayed, {lag} to go");
                },
            )
            .await?;
            println!(
                "rebuilt {}: {} events replayed in {:.1} s",
                what.group(),
                report.replayed,
                report.took.as_secs_f64()
            );
        }
        Command::Prune => {
            let report = app.prune().await?;
            println!(
                "pruned {} events, {} processed marks, {} idempotency keys, {} sent outbox rows, {} replayed dead letters, {} minute windows, {} fraud orders, {} unique-viewer rows, {} visitor-id salts, {} carts",
                report.events,
                report.processed_marks,
                report.idempotency_keys,
                report.sent_outbox,
                report.replayed_dead_letters,
                report.minute_windows,
                report.fraud_orders,
                report.product_viewers,
                report.viewer_salts,
                report.carts
            );
        }
        Command::Bench(_) => unreachable!("handled before the app is built"),
        Command::Dlq { command } => dlq(&app, command).await?,
        // Handled above, before the app is built.
        Command::Keys { command } => keys_command(&app.settings, &command)?,
    }
    Ok(())
}

fn print_urls(listener: &tokio::net::TcpListener) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    println!("orderflow listening on http://{addr}");
    println!("  shop     http://{addr}/");
    println!("  console  http://{addr}/console (admin)");
    println!("  API      http://{addr}/api/v1");
    println!("  docs     http://{addr}/docs");
    println!("  OpenAPI  http://{addr}/openapi.json");
    println!("  metrics  http://{addr}/metrics");
    println!("press Ctrl-C to stop");
    Ok(())
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: finishing in-flight requests and batches");
        cancel.cancel();
    });
    token
}

async fn print_consumers(app: &App) -> anyhow::Result<()> {
    let lags = app.operations.consumer_lag().await?;
    println!(
        "{:<10} {:<16} {:>9} {:>10} {:>10} {:>8}",
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    );
    for lag in &lags {
        println!(
            "{:<10} {:<16} {:>9} {:>10} {:>10} {:>8}",
            lag.group, lag.topic, lag.partition, lag.committed, lag.end, lag.lag
        );
    }
    let mut totals: std::collections::BTreeMap<&str, i64> = Default::default();
    for lag in &lags {
        *totals.entry(lag.group.as_str()).or_default() += lag.lag;
    }
    println!();
    for (group, lag) in totals {
        println!("{group:<10} total lag {lag}");
    }
    Ok(())
}

async fn dlq(app: &App, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { all, limit } => {
            let items = app.operations.dead_letters(Some(limit), all).await?;
            if items.is_empty() {
                println!("the dead-letter queue is empty");
            }
            for d in items {
                println!(
                    "{}  {:<9} {:<32} attempts={} {}  {}",
                    d.id,
                    d.group,
                    d.event.type_name(),
                    d.attempts,
                    d.failed_at.format("%Y-%m-%d %H:%M:%S"),
                    if d.replayed_at.is_some() {
                        "replayed"
                    } else {
                        &d.error
                    }
                );
            }
        }
        DlqCommand::Show { id } => {
            let d = app.operations.dead_letter(id).await?;
            let view = serde_json::json!({
                "id": d.id, "group": d.group, "topic": d.topic, "partition": d.partition,
                "offset": d.offset, "error": d.error, "attempts": d.attempts,
                "failed_at": d.failed_at, "replayed_at": d.replayed_at, "event": d.event.to_json(),
            });
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        DlqCommand::Replay { id } => {
            let d = app.operations.replay(id).await?;
            println!(
                "replayed {} ({}) to {} for group {}",
                d.event.id,
                d.event.type_name(),
                d.topic,
                d.group
            );
        }
    }
    Ok(())
}

fn keys_command(settings: &Settings, command: &KeysCommand) -> anyhow::Result<()> {
    let dir = &settings.data_dir;
    let format = settings.token_format;
    let keep_for = orderflow_core::services::auth::AuthSettings::default().key_retention();
    match command {
        KeysCommand::List => {
            let set = keys::load_or_create(dir, format)?;
            let signing = set.signing_key(format).map(|k| k.kid.clone());
            let mut sorted = set.keys.clone();
            sorted.sort_by_key(|k| k.created_at);
            println!("{:<52} {:<9} {:<20} SIGNS", "KID", "ALG", "CREATED");
            for key in sorted {
                println!(
                    "{:<52} {:<9} {:<20} {}",
                    key.kid,
                    key.alg.as_str(),
                    key.created_at.format("%Y-%m-%d %H:%M:%S"),
                    if Some(&key.kid) == signing.as_ref() {
                        format!("yes ({format} tokens)")
                    } else {
                        "no (verifies only)".to_owned()
                    }
                );
            }
        }
        KeysCommand::Rotate { alg } => {
            let alg = alg.unwrap_or(format.default_algorithm());
            let (key, dropped) = keys::rotate(dir, alg, keep_for, format)?;
            println!("new signing key {} ({})", key.kid, key.alg.as_str());
            for kid in dropped {
                println!("dropped expired key {kid}");
            }
            if alg.format() == format {
                println!(
                    "send orderflow SIGHUP (or restart it) to sign with it; tokens signed before keep working"
                );
            } else {
                println!(
                    "it signs once ORDERFLOW_TOKEN_FORMAT={}; until then it only waits",
                    alg.format()
                );
            }
        }
        KeysCommand::Prune => {
            let dropped = keys::prune(dir, keep_for, format)?;
            if dropped.is_empty() {
                println!("no key to drop");
            }
            for kid in dropped {
                println!("dropped expired key {kid}");
            }
        }
    }
    Ok(())
}

/// Hides a password in a database URL before printing it.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
