//! `orderflow bench --read-ceiling`: what orderflow's HTTP stack costs on the
//! read path, measured side by side in one run (issue 11).
//!
//! Three servers answer the same closed-loop load (`--users` connections,
//! keep-alive, one request at a time each), in turn, for `--duration-secs`
//! each, two rounds so a noisy moment shows as a spread:
//! - **product read**: `GET /api/v1/products/{id}` of a v2 server, served
//!   from L1, with metrics and tracing at their defaults and a catalog
//!   rate-limit policy generous enough to admit the load (so its lookup is
//!   still paid);
//! - **healthz**: `GET /healthz` of the same server: a fixed body behind the
//!   whole middleware stack, so product read ÷ healthz is the handler's
//!   share and healthz ÷ bare the middleware's;
//! - **bare axum**: a listener with no middleware that answers the product's
//!   exact bytes (a child process, `orderflow bench --bare-listener`), the
//!   ceiling of this machine, runtime and HTTP library.
//!
//! Beside the throughput, the CPU time the answering process used per
//! answered request (user + system, from `/proc/PID/stat`): on a small
//! machine that also runs the load generator, throughput moves with
//! whatever else runs, while the work a request costs the server moves
//! much less, so it is what shows a change of a few percent.
//!
//! The load generator is a lean HTTP/1.1 client (one hyper connection per
//! user, no pool, no redirects), so it costs the server's cores as little
//! as possible; on a small machine it still shares them, which is why the
//! three are measured in the same run and compared as shares, not as
//! absolute numbers.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::report::boxed;
use crate::shop::Shop;
use crate::sut::{Architecture, Server, V2};
use crate::{BenchArgs, BenchError, spinner};

/// The catalog policy the product read pays: far above what one machine
/// can send, so nothing is refused, but looked up on every request.
pub const GENEROUS_CATALOG_POLICY: &str = "catalog=ip:bucket:10000000/s,burst=20000000";

/// The row of the bare listener, the ceiling the others are shares of.
const BARE: &str = "bare axum";

/// Rounds of the three measurements.
const ROUNDS: usize = 2;

/// One server's throughput, per round.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRow {
    pub name: &'static str,
    pub url: String,
    pub requests_per_sec: Vec<f64>,
    /// CPU microseconds the answering process used per answered request,
    /// per round (`None` where `/proc` could not be read).
    pub cpu_us_per_request: Vec<Option<f64>>,
    /// Answers other than 200 (and failed requests), over all rounds.
    pub errors: u64,
}

impl CeilingRow {
    pub fn best(&self) -> f64 {
        self.requests_per_sec.iter().copied().fold(0.0, f64::max)
    }

    /// The cheapest round's CPU per request.
    pub fn cpu_us_best(&self) -> Option<f64> {
        self.cpu_us_per_request
            .iter()
            .flatten()
            .copied()
            .reduce(f64::min)
    }
}

/// The three rows and how they were measured.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRun {
    pub connections: usize,
    pub secs_each: u64,
    pub body_bytes: usize,
    pub rows: Vec<CeilingRow>,
}

impl CeilingRun {
    fn row(&self, name: &str) -> Option<&CeilingRow> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The best round of `name` as a share of the best bare round.
    pub fn share_of_bare(&self, name: &str) -> Option<f64> {
        let bare = self.row(BARE)?.best();
        let row = self.row(name)?;
        (bare > 0.0).then(|| row.best() / bare)
    }

    pub fn table(&self) -> String {
        let mut header = vec!["server".to_owned()];
        header.extend((1..=ROUNDS).map(|r| format!("round {r}")));
        header.extend([
            "best".to_owned(),
            "of bare".to_owned(),
            "CPU per request".to_owned(),
            "× bare".to_owned(),
            "errors".to_owned(),
        ]);
        let bare_cpu = self.row(BARE).and_then(CeilingRow::cpu_us_best);
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![row.name.to_owned()];
                cells.extend(row.requests_per_sec.iter().map(|r| format!("{r:.0}/s")));
                cells.push(format!("{:.0}/s", row.best()));
                cells.push(
                    self.share_of_bare(row.name)
                        .map_or_else(|| "n/a".to_owned(), |s| format!("{:.0}%", s * 100.0)),
                );
                let cpu = row.cpu_us_best();
                cells.push(cpu.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1} µs")));
                cells.push(match (cpu, bare_cpu) {
                    (Some(us), Some(bare)) if bare > 0.0 => format!("{:.2}", us / bare),
                    _ => "n/a".to_owned(),
                });
                cells.push(row.errors.to_string());
                cells
            })
            .collect();
        format!(
            "read ceiling: {} connections, {} s each, {} rounds, {}-byte body\n{}",
            self.connections,
            self.secs_each,
            ROUNDS,
            self.body_bytes,
            boxed(&header, &rows)
        )
    }
}

/// Runs the three measurements against a fresh v2 server (or `--target`).
pub async fn run(args: &BenchArgs, binary: &Path) -> Result<CeilingRun, BenchError> {
    let (architecture, server) = match &args.target {
        Some(url) => (Architecture::target(url), Server::external(url)),
        None => (
            V2,
            Server::start_with(
                binary,
                &V2,
                &[],
                // Logs at the server's default level, not the bench's quiet one.
                &[
                    ("ORDERFLOW_RATE_LIMITS", Some(GENEROUS_CATALOG_POLICY)),
                    ("RUST_LOG", None),
                ],
            )
            .await?,
        ),
    };
    println!("\n▶ read ceiling: {}", architecture.title());
    let base = server.base_url.trim_end_matches('/').to_owned();
    let (product_url, body) = a_product(&base).await?;
    let body_file =
        tempfile::NamedTempFile::new().map_err(|e| BenchError::Setup(format!("temp file: {e}")))?;
    std::fs::write(body_file.path(), &body)
        .map_err(|e| BenchError::Setup(format!("temp file: {e}")))?;
    let bare = BareListener::start(binary, body_file.path()).await?;

    let targets = [
        ("product read", product_url),
        ("healthz", format!("{base}/healthz")),
        (BARE, bare.url.clone()),
    ];
    // Which process answers each row.
    let pids = [server.pid(), server.pid(), bare.child.id()];
    let mut rows: Vec<CeilingRow> = targets
        .iter()
        .map(|(name, url)| CeilingRow {
            name,
            url: url.clone(),
            requests_per_sec: Vec::new(),
            cpu_us_per_request: Vec::new(),
            errors: 0,
        })
        .collect();
    let duration = Duration::from_secs(args.duration_secs.max(1));
    let warmup = Duration::from_secs(args.warmup_secs.min(args.duration_secs).max(1));
    for round in 1..=ROUNDS {
        for (row, pid) in rows.iter_mut().zip(pids) {
            let bar = spinner(&format!("round {round}: {} ({})", row.name, row.url));
            closed_loop(&row.url, args.users, warmup).await?;
            let cpu_before = pid.and_then(cpu_time);
            let (ok, errors) = closed_loop(&row.url, args.users, duration).await?;
            let cpu = match (cpu_before, pid.and_then(cpu_time)) {
                (Some(before), Some(after)) if ok > 0 => {
                    Some((after - before).as_secs_f64() * 1e6 / ok as f64)
                }
                _ => None,
            };
            bar.finish_and_clear();
            let rate = ok as f64 / duration.as_secs_f64();
            println!(
                "  round {round}: {:<13} {rate:>9.0} req/s, {} CPU per request ({errors} errors)",
                row.name,
                cpu.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1} µs"))
            );
            row.requests_per_sec.push(rate);
            row.cpu_us_per_request.push(cpu);
            row.errors += errors;
        }
    }
    drop(bare);
    server.stop().await?;
    Ok(CeilingRun {
        connections: args.users,
        secs_each: duration.as_secs(),
        body_bytes: body.len(),
        rows,
    })
}

/// The first product of the catalog: its URL and its exact answer.
async fn a_product(base: &str) -> Result<(String, Bytes), BenchError> {
    let id = *Shop::new(base, 1)
        .product_ids()
        .await?
        .first()
        .expect("product_ids refuses an empty catalog");
    let url = format!("{base}/api/v1/products/{id}");
    let body = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| BenchError::Setup(format!("reading {url}: {e}")))?
        .bytes()
        .await
        .map_err(|e| BenchError::Setup(format!("reading {url}: {e}")))?;
    Ok((url, body))
}

/// The CPU time (user + system) process `pid` has used so far; `None` where
/// `/proc` cannot tell (another OS, a process gone).
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    let ticks = stat.utime + stat.stime;
    Some(Duration::from_secs_f64(
        ticks as f64 / procfs::ticks_per_second() as f64,
    ))
}

/// `users` connections, each sending its next GET when the last answered,
/// for `duration`; the 200 answers and the rest.
async fn closed_loop(
    url: &str,
    users: usize,
    duration: Duration,
) -> Result<(u64, u64), BenchError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| BenchError::Setup(format!("{url}: {e}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| BenchError::Setup(format!("{url}: no host")))?
        .clone();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(users);
    for _ in 0..users.max(1) {
        let (uri, authority) = (uri.clone(), authority.clone());
        let (ok, errors) = (ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            let driver = tokio::spawn(connection);
            while Instant::now() < until {
                let request = hyper::Request::get(uri.clone())
                    .header(hyper::header::HOST, authority.as_str())
                    .body(Empty::<Bytes>::new())
                    .map_err(std::io::Error::other)?;
                match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let read = response.into_body().collect().await;
                        if status == hyper::StatusCode::OK && read.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            drop(sender);
            driver.abort();
            Ok::<(), std::io::Error>(())
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(BenchError::Setup(format!("{url}: {error}"))),
            Err(error) => return Err(BenchError::Setup(format!("{url}: {error}"))),
        }
    }
    Ok((ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed)))
}

/// The bare listener child: `orderflow bench --bare-listener ADDR
/// --bare-body FILE`. Killed when dropped.
struct BareListener {
    child: Child,
    url: String,
}

impl BareListener {
    async fn start(binary: &Path, body: &Path) -> Result<Self, BenchError> {
        let port = crate::sut::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command
            .arg("bench")
            .arg("--bare-listener")
            .arg(&listen)
            .arg("--bare-body")
            .arg(body)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = crate::priority::at_server_priority(move || command.spawn())
            .await?
            .map_err(|e| BenchError::Server(format!("starting the bare listener: {e}")))?;
        let url = format!("http://{listen}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        // A connection whose two ends are one address is the probe meeting
        // itself (its ephemeral source port is the free port we picked), not
        // the listener.
        let answered = |stream: tokio::net::TcpStream| {
            stream
                .local_addr()
                .ok()
                .is_some_and(|local| stream.peer_addr().ok() != Some(local))
        };
        while !tokio::net::TcpStream::connect(&listen)
            .await
            .is_ok_and(answered)
        {
            if Instant::now() > deadline {
                return Err(BenchError::Server(
                    "the bare listener did not start within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, url })
    }
}

impl Drop for BareListener {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The child's side: answers every GET with the file's bytes as JSON, with
/// no middleware at all, until killed.
pub async fn serve_bare(listen: &str, body: &Path) -> Result<(), BenchError> {
    let bytes = Bytes::from(
        std::fs::read(body).map_err(|e| BenchError::Setup(format!("{}: {e}", body.display())))?,
    );
    let app = axum::Router::new().fallback(move || {
        let bytes = bytes.clone();
        async move { ([(hyper::header::CONTENT_TYPE, "application/json")], bytes) }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| BenchError::Server(format!("{listen}: {e}")))?;
    axum::serve(listener, app)
        .await
        .map_err(|e| BenchError::Server(e.to_string()))
}
