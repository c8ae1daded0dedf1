//! `orderflow bench live`: the live channels under load. How long a change
//! takes from its commit to the clients that follow it, how many messages
//! the server delivers per second, and what a connection costs the server.
//!
//! What it does, on one `orderflow serve --demo` it starts (v2, embedded:
//! SQLite, the in-process cache, the event log in the database):
//! 1. raises every product's stock (no order is refused for stock) and
//!    registers `--shoppers` shoppers, who place the orders;
//! 2. opens `--connections` WebSocket connections (`/api/v1/live/ws`), each
//!    following its own `orders:{user}` and the one shared
//!    `product:{id}` (the catalog's first product). Each shopper has one
//!    connection of its own, with its own token; the other connections
//!    follow the `orders:{user}` channel of a user who places no order,
//!    authenticated as the admin (who may follow any user's channel), because
//!    registering 10,000 shoppers would spend minutes hashing passwords
//!    (about 2 × 50 ms of a core each). The server does the same work per
//!    connection either way: a follower of its own channel, the revocation
//!    checks of its token;
//! 3. leaves them idle for `--idle-secs`: the server's memory per idle
//!    connection is (its resident memory then − before the connections) /
//!    connections, and its CPU while idle is measured too;
//! 4. places orders open loop at `--rate` for `--duration-secs`, one line
//!    each, spread uniformly over the catalog (the shared product among
//!    them), then waits `--drain-secs` for the last messages.
//!
//! **Commit → client** is the time from a message's `at` to its arrival at
//! a client, both read from this machine's clock: for `orders:{user}` the
//! time the order's history entry was written, for `product:{id}` the
//! product's `updated_at`. Both are set inside the transaction, just
//! before its commit, so the figure is an upper bound by the rest of the
//! transaction. Every message received is counted; latencies are kept
//! for messages whose `at` falls within the load.
//!
//! What is checked, not only timed: each connection's `orders:{user}`
//! positions must only grow (a message out of order or twice is counted),
//! and every connection must still be open at the end (`closing` frames
//! are counted by reason).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ceiling::cpu_time;
use crate::load::{Pacing, Plan, Targets, Workload};
use crate::shop::Shop;
use crate::stats::{Latencies, LatencySummary, throughput};
use crate::sut::{Server, V2};
use crate::{BenchArgs, BenchError, load_bar, spinner};

/// How long Tokio keeps an idle blocking thread (its default keep-alive,
/// and a second).
const HASHING_THREADS_LINGER: Duration = Duration::from_secs(11);

/// `orderflow bench live` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveArgs {
    /// WebSocket connections held open, each on its own `orders:{user}` and
    /// the shared `product:{id}`.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Shoppers who place the orders, each with a connection of its own
    /// (the rest of the connections follow users who place none).
    #[arg(long, default_value_t = 500)]
    pub shoppers: usize,
    /// Orders placed per second (open loop); several (`100,250,500`) run
    /// one step each, on the same connections.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pub rate: Vec<f64>,
    /// Seconds of orders per step.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Seconds the connections are left idle before the orders, for the
    /// memory and CPU an idle connection costs.
    #[arg(long, default_value_t = 5)]
    pub idle_secs: u64,
    /// Seconds to wait after a step's orders for its last messages.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// What `orderflow bench live` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRun {
    pub connections_asked: usize,
    pub connections_open: usize,
    pub connect_errors: u64,
    pub connect_secs: f64,
    pub shoppers: usize,
    pub duration_secs: f64,
    /// The server's resident memory with the first half of the connections
    /// open, and with all of them idle (KiB); the memory per idle
    /// connection is what the second half added.
    pub server_rss_half_kib: u64,
    pub server_rss_idle_kib: u64,
    pub idle_kib_per_connection: f64,
    /// Share of one core the server used while the connections were idle.
    pub server_cpu_idle_cores: f64,
    /// One per order rate, in the order run.
    pub steps: Vec<LiveStep>,
    /// Connections the server closed during the run, by reason, and
    /// connections that ended without a reason.
    pub closed: BTreeMap<String, u64>,
    pub dropped: u64,
}

/// One order rate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LiveStep {
    pub order_rate: f64,
    /// Share of one core the server, and this bench (the clients and the
    /// orders), used during the step.
    pub server_cpu_cores: f64,
    pub generator_cpu_cores: f64,
    /// The server's resident memory at the end of the step (KiB).
    pub server_rss_kib: u64,
    pub orders_accepted: u64,
    pub order_errors: u64,
    pub order_request: LatencySummary,
    /// Commit → client of `orders:{user}` messages, and of the shared
    /// `product:{id}`'s.
    pub order_messages: LatencySummary,
    pub order_message_percentiles: Vec<(f64, f64)>,
    pub product_messages: LatencySummary,
    pub product_message_percentiles: Vec<(f64, f64)>,
    /// Messages delivered per second during the step (both channels).
    pub messages_per_sec: f64,
    /// Messages received in each second from the start of the step.
    pub messages_each_second: Vec<u64>,
    /// Versions of the shared product committed during the step, as the
    /// clients saw them (the highest position − the first).
    pub product_versions: i64,
    /// `orders:{user}` messages whose position was not above the last one
    /// of their connection (sent out of order or twice): must be 0.
    pub out_of_order: u64,
}

impl LiveRun {
    pub fn table(&self) -> String {
        let summary = format!(
            "live: {} of {} connections open ({} errors, {:.1} s to open), {} shoppers ordering; \
             server memory per idle connection {:.1} KiB (the second half: {} → {} KiB resident), \
             server CPU idle {:.0}% of a core; closed by the server: {}, dropped: {}",
            self.connections_open,
            self.connections_asked,
            self.connect_errors,
            self.connect_secs,
            self.shoppers,
            self.idle_kib_per_connection,
            self.server_rss_half_kib,
            self.server_rss_idle_kib,
            self.server_cpu_idle_cores * 100.0,
            if self.closed.is_empty() {
                "none".to_owned()
            } else {
                self.closed
                    .iter()
                    .map(|(reason, n)| format!("{n} {reason}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.dropped,
        );
        let header: Vec<String> = [
            "orders/s",
            "orders (errors)",
            "request p50 / p99",
            "orders:{user} commit → client p50 / p99 / max",
            "product:{id} commit → client p50 / p99 / max",
            "messages/s",
            "out of order",
            "server / bench CPU",
        ]
        .map(str::to_owned)
        .to_vec();
        let latency =
            |l: &LatencySummary| format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms);
        let rows: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|step| {
                vec![
                    format!("{:.0}", step.order_rate),
                    format!("{} ({})", step.orders_accepted, step.order_errors),
                    format!(
                        "{:.1} / {:.1} ms",
                        step.order_request.p50_ms, step.order_request.p99_ms
                    ),
                    latency(&step.order_messages),
                    format!(
                        "{} ({} versions)",
                        latency(&step.product_messages),
                        step.product_versions
                    ),
                    format!("{:.0}", step.messages_per_sec),
                    step.out_of_order.to_string(),
                    format!(
                        "{:.0}% / {:.0}%",
                        step.server_cpu_cores * 100.0,
                        step.generator_cpu_cores * 100.0
                    ),
                ]
            })
            .collect();
        format!("{summary}\n{}", crate::report::boxed(&header, &rows))
    }
}

/// What the clients counted, shared by their tasks.
struct Tally {
    /// When the load started (messages are kept from then on).
    load_started: Mutex<Option<(Instant, chrono::DateTime<chrono::Utc>)>>,
    received: Mutex<Received>,
    out_of_order: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Received {
    orders: Latencies,
    product: Latencies,
    each_second: Vec<u64>,
    product_positions: Option<(i64, i64)>,
    closed: BTreeMap<String, u64>,
}

/// The parts of a frame the bench reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    channel: Option<&'a str>,
    position: Option<i64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<&'a str>,
}

impl Tally {
    fn new() -> Self {
        Self {
            load_started: Mutex::new(None),
            received: Mutex::new(Received::default()),
            out_of_order: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// A step starts now: messages are kept from now on.
    fn start(&self) {
        *self.load_started.lock().expect("tally lock") = Some((Instant::now(), chrono::Utc::now()));
    }

    /// What the step received; stops keeping messages until the next start
    /// (the closing reasons stay, for the whole run).
    fn take(&self) -> Received {
        *self.load_started.lock().expect("tally lock") = None;
        let mut received = self.received.lock().expect("tally lock");
        let closed = std::mem::take(&mut received.closed);
        let step = std::mem::take(&mut *received);
        received.closed = closed;
        step
    }

    /// Counts one `message` frame received now.
    fn message(&self, frame: &Frame<'_>) {
        let now = chrono::Utc::now();
        let Some((started, started_at)) = *self.load_started.lock().expect("tally lock") else {
            return; // Before the load: the restocks, the subscriptions.
        };
        let (Some(channel), Some(at), Some(position)) = (frame.channel, frame.at, frame.position)
        else {
            return;
        };
        let second = started.elapsed().as_secs() as usize;
        let latency = (now - at).to_std().unwrap_or_default();
        let mut received = self.received.lock().expect("tally lock");
        if received.each_second.len() <= second {
            received.each_second.resize(second + 1, 0);
        }
        received.each_second[second] += 1;
        if at < started_at {
            return;
        }
        if channel.starts_with("product:") {
            received.product.record(latency);
            let (first, last) = received
                .product_positions
                .get_or_insert((position, position));
            *first = (*first).min(position);
            *last = (*last).max(position);
        } else {
            received.orders.record(latency);
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs the scenario on a server of its own.
pub async fn run(args: &BenchArgs, live: &LiveArgs, binary: &Path) -> Result<LiveRun, BenchError> {
    raise_file_limit(live.connections)?;
    println!(
        "\n▶ live: {} WebSocket connections on one orderflow serve (v2, embedded)",
        live.connections
    );
    let server = Server::start(binary, &V2, &[]).await?;
    let pid = server
        .pid()
        .ok_or_else(|| BenchError::Server("the live bench needs a server it started".into()))?;
    let shop = Shop::new(&server.base_url, 64);
    let seeding = spinner("raising every product's stock");
    let products = shop.product_ids().await?;
    let (email, password) = server.admin.clone().expect("a started server has an admin");
    let admin = shop.login(&email, &password).await?;
    shop.restock_all(&admin, &products, 100_000_000).await?;
    seeding.set_message(format!("registering {} shoppers", live.shoppers));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let shoppers = live.shoppers.clamp(1, live.connections.max(1));
    let registered = shop.registered_shoppers(shoppers, &run_id).await?;
    let mut users = Vec::with_capacity(registered.len());
    let mut tokens = Vec::with_capacity(registered.len());
    for shopper in registered {
        users.push(shopper.id.ok_or_else(|| {
            BenchError::Setup("a bench shopper existed already (no id to follow)".into())
        })?);
        tokens.push(shopper.token);
    }
    // The passwords were hashed on the server's blocking threads, which
    // hand their memory back when they exit, 10 s after their last job;
    // measured before that, the return reads as connections costing less.
    seeding.set_message("letting the server's hashing threads go");
    tokio::time::sleep(HASHING_THREADS_LINGER).await;
    seeding.finish_and_clear();

    let shared = format!("product:{}", products[0]);
    let url = format!(
        "{}/api/v1/live/ws",
        server.base_url.replacen("http://", "ws://", 1)
    );
    let tally = Arc::new(Tally::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let bar = load_bar("opening connections", Some(live.connections as u64));
    let mut connecting = Duration::ZERO;
    let plan_of = |i: usize| {
        let (token, user) = match tokens.get(i) {
            Some(token) => (token.clone(), users[i]),
            None => (admin.clone(), uuid::Uuid::now_v7()),
        };
        (token, [format!("orders:{user}"), shared.clone()])
    };
    // Two halves, the server's memory measured after each: what the second
    // half added is what connections cost, whatever the setup (password
    // hashing, the restocks) left in the allocator before.
    let half = live.connections / 2;
    let mut readers = tokio::task::JoinSet::new();
    let mut errors = Vec::new();
    let mut resident = Vec::new();
    for range in [0..half, half..live.connections] {
        let batch_started = Instant::now();
        let plans = range.map(|i| {
            let (token, channels) = plan_of(i);
            let (url, bar) = (url.clone(), bar.clone());
            async move {
                let socket = open(&url, &token, &channels).await;
                bar.inc(1);
                socket
            }
        });
        let sockets: Vec<Result<Socket, String>> = futures::stream::iter(plans)
            .buffer_unordered(live.connect_concurrency.max(1))
            .collect()
            .await;
        for socket in sockets {
            match socket {
                Ok(socket) => {
                    readers.spawn(read(socket, tally.clone(), stopped.clone()));
                }
                Err(error) => errors.push(error),
            }
        }
        connecting += batch_started.elapsed();
        resident.push((readers.len(), settled_resident_kib(pid).await?));
    }
    bar.finish_and_clear();
    let connect_secs = connecting.as_secs_f64();
    let connect_errors = errors.len() as u64;
    let open_connections = readers.len();
    println!(
        "  {open_connections} connections open in {connect_secs:.1} s ({connect_errors} errors{})",
        errors
            .first()
            .map(|e| format!("; the first: {e}"))
            .unwrap_or_default()
    );

    let idle = spinner("connections idle");
    let cpu_idle_before = cpu_time(pid);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(live.idle_secs.max(1))).await;
    let cpu_idle = cpu_share(cpu_idle_before, cpu_time(pid), idle_started.elapsed());
    let rss_idle = settled_resident_kib(pid).await?;
    idle.finish_and_clear();
    let ((first_half, rss_half), _) = (resident[0], resident[1]);
    let added = open_connections.saturating_sub(first_half).max(1);

    let targets = Arc::new(Targets::new(products.clone(), tokens.clone()));
    let orders_shop = Shop::new(&server.base_url, 256);
    let mut steps = Vec::new();
    for (index, rate) in live.rate.iter().copied().enumerate() {
        let plan = Plan {
            workload: Workload::Order,
            browse_percent: 0,
            pacing: Pacing::Open { rate_per_sec: rate },
            duration: Duration::from_secs(live.duration_secs.max(1)),
            seed: args.seed.wrapping_add(index as u64),
        };
        let bar = load_bar(
            &format!("{rate:.0} orders/s"),
            Some((rate * plan.duration.as_secs_f64()) as u64),
        );
        tally.start();
        let cpu_before = cpu_time(pid);
        let started = Instant::now();
        let phase = crate::load::run(&orders_shop, targets.clone(), &plan, &bar).await;
        let elapsed = started.elapsed();
        let server_cpu = cpu_share(cpu_before, cpu_time(pid), elapsed);
        bar.finish_and_clear();
        let draining = spinner("waiting for the last messages");
        tokio::time::sleep(Duration::from_secs(live.drain_secs)).await;
        draining.finish_and_clear();
        let received = tally.take();
        let seconds = (elapsed.as_secs_f64().ceil() as usize).max(1);
        let during: u64 = received.each_second.iter().take(seconds).sum();
        let step = LiveStep {
            order_rate: rate,
            server_cpu_cores: server_cpu,
            generator_cpu_cores: phase.generator_cpu.as_secs_f64() / elapsed.as_secs_f64(),
            server_rss_kib: resident_kib(pid)?,
            orders_accepted: phase.accepted_orders.len() as u64,
            order_errors: phase.order_errors,
            order_request: phase.order.summary(),
            order_messages: received.orders.summary(),
            order_message_percentiles: received.orders.percentile_curve(),
            product_messages: received.product.summary(),
            product_message_percentiles: received.product.percentile_curve(),
            messages_per_sec: throughput(during, Duration::from_secs(seconds as u64)),
            messages_each_second: received.each_second,
            product_versions: received
                .product_positions
                .map(|(first, last)| last - first)
                .unwrap_or(0),
            out_of_order: tally.out_of_order.swap(0, Ordering::Relaxed),
        };
        println!(
            "  {rate:.0} orders/s: orders:{{user}} p99 {:.1} ms, product:{{id}} p99 {:.1} ms, {:.0} messages/s",
            step.order_messages.p99_ms, step.product_messages.p99_ms, step.messages_per_sec
        );
        steps.push(step);
    }
    let _ = stop.send(true);
    while readers.join_next().await.is_some() {}
    server.stop().await?;
    let closed = std::mem::take(&mut tally.received.lock().expect("tally lock").closed);
    Ok(LiveRun {
        connections_asked: live.connections,
        connections_open: open_connections,
        connect_errors,
        connect_secs,
        shoppers,
        duration_secs: live.duration_secs.max(1) as f64,
        server_rss_half_kib: rss_half,
        server_rss_idle_kib: rss_idle,
        idle_kib_per_connection: rss_idle.saturating_sub(rss_half) as f64 / added as f64,
        server_cpu_idle_cores: cpu_idle,
        steps,
        closed,
        dropped: tally.dropped.load(Ordering::Relaxed),
    })
}

/// Connects as `token`, subscribes to `channels` and waits until each is
/// confirmed.
async fn open(url: &str, token: &str, channels: &[String]) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .map_err(|e: http::header::InvalidHeaderValue| e.to_string())?,
    );
    // Small buffers: 10,000 clients with the default 128 KiB read buffer
    // would hold more than a gigabyte in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    for channel in channels {
        let command = serde_json::json!({"type": "subscribe", "channel": channel});
        socket
            .send(Message::Text(command.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut confirmed = 0;
    while confirmed < channels.len() {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .map_err(|_| "no `subscribed` frame within 30 s".to_owned())?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Frame<'_> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                match frame.kind {
                    "subscribed" => confirmed += 1,
                    "error" | "closing" => return Err(format!("refused: {text}")),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("closed while subscribing".into()),
        }
    }
    Ok(socket)
}

/// Reads one connection's frames until told to stop, counting them.
async fn read(mut socket: Socket, tally: Arc<Tally>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_order_position = i64::MIN;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = socket.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                    continue;
                };
                match frame.kind {
                    "message" => {
                        if frame.channel.is_some_and(|c| c.starts_with("orders:")) {
                            let position = frame.position.unwrap_or(i64::MIN);
                            if position <= last_order_position {
                                tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            last_order_position = last_order_position.max(position);
                        }
                        tally.message(&frame);
                    }
                    "closing" => {
                        let reason = frame.reason.unwrap_or("unknown").to_owned();
                        *tally
                            .received
                            .lock()
                            .expect("tally lock")
                            .closed
                            .entry(reason)
                            .or_default() += 1;
                        return;
                    }
                    _ => {}
                }
            }
            // Pings are answered by the library as the socket is read.
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                tally.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let _ = socket.close(None).await;
}

/// The share of a core between two CPU readings over `elapsed` (NaN when
/// `/proc` could not tell).
fn cpu_share(before: Option<Duration>, after: Option<Duration>, elapsed: Duration) -> f64 {
    match (before, after) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before).as_secs_f64() / elapsed.as_secs_f64()
        }
        _ => f64::NAN,
    }
}

/// Process `pid`'s resident memory in KiB.
pub(crate) fn resident_kib(pid: u32) -> Result<u64, BenchError> {
    Ok(memory_kib(pid)?.resident)
}

/// A process's resident memory, and the anonymous part of it (heap and
/// stacks: what the process allocated, without the mapped files such as
/// its binary and SQLite's memory-mapped database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryKib {
    pub(crate) resident: u64,
    pub(crate) anonymous: u64,
}

/// Process `pid`'s [`MemoryKib`], from `/proc/{pid}/status`.
pub(crate) fn memory_kib(pid: u32) -> Result<MemoryKib, BenchError> {
    let status = i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|process| process.status().ok())
        .ok_or_else(|| BenchError::Server(format!("reading /proc/{pid}/status")))?;
    match (status.vmrss, status.rssanon) {
        (Some(resident), Some(anonymous)) => Ok(MemoryKib {
            resident,
            anonymous,
        }),
        _ => Err(BenchError::Server(format!(
            "/proc/{pid}/status has no VmRSS or RssAnon"
        ))),
    }
}

/// Process `pid`'s resident memory once it has settled: read every 500 ms
/// until four readings in a row are within 1% of each other (at most 30
/// s), so memory the server is still handing back (or still taking) does
/// not count as the connections'.
async fn settled_resident_kib(pid: u32) -> Result<u64, BenchError> {
    let mut readings = vec![resident_kib(pid)?];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        readings.push(resident_kib(pid)?);
        let recent = &readings[readings.len().saturating_sub(4)..];
        let (low, high) = recent
            .iter()
            .fold((u64::MAX, 0), |(low, high), r| (low.min(*r), high.max(*r)));
        if recent.len() == 4 && high - low <= high / 100 {
            break;
        }
    }
    Ok(*readings.last().expect("one reading at least"))
}

/// Raises this process's open-file limit (inherited by the server it
/// starts) to what `connections` need, past the hard limit where the user
/// may (root).
fn raise_file_limit(connections: usize) -> Result<(), BenchError> {
    use rlimit::Resource;
    let needed = connections as u64 + 1_024;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE)
        .map_err(|e| BenchError::Setup(format!("reading the open-file limit: {e}")))?;
    if soft >= needed {
        return Ok(());
    }
    rlimit::setrlimit(Resource::NOFILE, needed, hard.max(needed)).map_err(|e| {
        BenchError::Setup(format!(
            "{connections} connections need {needed} open files, the limit is {soft} (hard {hard}) and could not be raised ({e}): run `ulimit -n {needed}` first or ask for fewer --connections"
        ))
    })
}
