//! The Kafka-protocol broker `tansu` for tests.
//!
//! [`KafkaBroker::start`] runs `tansu broker` with in-memory storage
//! (`--storage-engine memory://tansu/`) from an empty temporary directory,
//! listening on and advertising `127.0.0.1:<free port>`, under
//! [`ServerProcess`] so it dies with the test process. [`shared`] gives every
//! test of one test binary the same broker (started on first use): starting
//! a broker per test would cost seconds each, and tests keep apart by using
//! their own topic prefix and group names instead.
//!
//! Memory storage keeps nothing across a restart, so tests on such a
//! broker that check "resume after a restart" restart the *consumer*, not
//! the broker.
//!
//! [`KafkaBroker::start_on_postgres`] runs one whose storage is a database
//! of its own on a testkit [`PostgresServer`] (tansu's PostgreSQL engine;
//! its schema, [`TANSU_POSTGRES_SCHEMA`], applied first). That broker can
//! be stopped and started again on the same port with the same storage
//! ([`KafkaBroker::stop`], [`KafkaBroker::start_again`],
//! [`KafkaBroker::is_running`], as [`PostgresServer`] has): topics, records
//! and committed group offsets survive, so a test can take the broker away
//! under load (every broker has these three, but one on memory storage
//! comes back empty). Why PostgreSQL: tansu 0.6's SQLite engine panics on
//! consumer-group offset-commit conflicts under concurrency, and its memory
//! engine keeps nothing. Clients of a PostgreSQL-engine broker set
//! [`POSTGRES_ENGINE_CLIENT_CONFIG`] (on PostgreSQL 15 tansu cannot answer
//! a `read_committed` "latest offset" request).
//!
//! [`KafkaBroker::start_authenticated`] (and [`shared_authenticated`]) runs
//! one that requires SASL SCRAM (`tansu broker --authentication`), with
//! users made by `tansu user create`; [`sasl_config`] gives a client's
//! librdkafka properties for it.
//!
//! tansu 0.6 serves no TLS: its `--cert` and `--key` build a TLS acceptor
//! (`tansu-broker` `src/broker.rs`, `let _acceptor = …`) that the accept
//! loop never uses; connections are served as plain TCP. So
//! [`KafkaBroker::start_authenticated_behind_tls`] (and
//! [`shared_authenticated_tls`]) puts a TLS terminator of this crate in
//! front of an authenticating tansu, with a CA made in the test, and has
//! tansu advertise the terminator's address: every connection a client
//! makes is TLS (the client's side of TLS is real), while the broker
//! itself still speaks plaintext behind it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Connection;

use crate::pki::TestPki;
use crate::postgres::PostgresServer;
use crate::{ServerProcess, find_program, free_port, wait_for_port};

mod tls_front;

const INSTALL_HINT: &str =
    "install it with `cargo install --locked tansu@0.6.0 --features dynostore,libsql,postgres`";
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn tansu() -> anyhow::Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin").display().to_string());
    let extra: Vec<&str> = cargo_bin.iter().map(String::as_str).collect();
    find_program("tansu", &extra, INSTALL_HINT)
}

/// tansu 0.6's PostgreSQL schema: `etc/initdb.d/010-schema.sql` of
/// <https://github.com/tansu-io/tansu> at tag v0.6.0 (commit 079c4c33,
/// Apache-2.0, copied unchanged). tansu's PostgreSQL engine creates no
/// tables (its own setup runs this file as a PostgreSQL init script);
/// [`KafkaBroker::start_on_postgres`] applies it to the broker's database.
pub const TANSU_POSTGRES_SCHEMA: &str = include_str!("../vendor/tansu/postgres-schema.sql");

/// The librdkafka properties every client of a broker on the PostgreSQL
/// engine needs: `isolation.level=read_uncommitted`. tansu answers a
/// "latest offset" ListOffsets request of a `read_committed` client (the
/// librdkafka default) with `list_latest_offset_committed.sql`, whose
/// subquery in FROM has no alias: PostgreSQL 15 refuses it ("subquery in
/// FROM must have an alias", accepted from 16 on), and tansu drops the
/// client's connection. tansu 0.6 has no transactions, so both isolation
/// levels read the same records.
pub const POSTGRES_ENGINE_CLIENT_CONFIG: &[(&str, &str)] =
    &[("isolation.level", "read_uncommitted")];

const MEMORY_STORAGE: &str = "memory://tansu/";
/// Relative to the broker's working directory, its temporary directory.
const SQLITE_STORAGE: &str = "sqlite://tansu.db";

/// A fresh temporary directory for one broker (its log, its storage file).
fn broker_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("orderflow-tansu-")
        .tempdir()
        .context("creating a temporary directory for tansu")
}

/// How one `tansu broker` is started: what [`KafkaBroker::start_again`]
/// repeats.
#[derive(Debug, Clone)]
struct Launch {
    /// The port tansu listens on (behind a TLS terminator: not the one
    /// clients connect to).
    port: u16,
    storage: String,
    authentication: bool,
    /// The port it advertises when it is not its own (a TLS terminator's).
    advertised: Option<u16>,
}

impl Launch {
    /// On a free port, advertising it.
    fn new(storage: &str) -> Launch {
        Launch {
            port: free_port(),
            storage: storage.to_owned(),
            authentication: false,
            advertised: None,
        }
    }
}

/// Starts `tansu broker` in `dir` as `launch` says, and waits until it
/// accepts connections. On failure the error carries the end of the
/// broker's log.
fn spawn(program: &Path, dir: &Path, launch: &Launch) -> anyhow::Result<ServerProcess> {
    let port = launch.port;
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", launch.advertised.unwrap_or(port));
    let mut args: Vec<OsString> = [
        "broker",
        "--listener-url",
        url.as_str(),
        "--advertised-listener-url",
        advertised.as_str(),
        "--storage-engine",
        launch.storage.as_str(),
        "--cluster-id",
        "orderflow-test",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if launch.authentication {
        args.push("--authentication".into());
    }
    let log = dir.join("tansu.log");
    let mut process = ServerProcess::spawn("tansu", program, &args, None, dir, &log, "TERM")?;
    let error = match wait_for_port(port, START_TIMEOUT) {
        Ok(()) if process.is_running() => return Ok(process),
        Ok(()) => anyhow::anyhow!("tansu exited right after start"),
        Err(e) => e,
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = output.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(error.context(format!("tansu log:\n{tail}")))
}

/// An authenticating tansu in `dir` that knows `users`: made on a broker
/// without authentication, which is then stopped, over the same SQLite
/// file (see [`KafkaBroker::start_authenticated`] for why).
fn spawn_authenticated(
    program: &Path,
    dir: &Path,
    users: &[(&str, &str)],
    advertised: Option<u16>,
) -> anyhow::Result<(Launch, ServerProcess)> {
    let setup_launch = Launch::new(SQLITE_STORAGE);
    let setup = spawn(program, dir, &setup_launch)?;
    create_users(program, setup_launch.port, users)?;
    // Stopped (TERM, waited for) before the second start opens the file.
    drop(setup);
    let launch = Launch {
        authentication: true,
        advertised,
        ..Launch::new(SQLITE_STORAGE)
    };
    let process = spawn(program, dir, &launch)?;
    Ok((launch, process))
}

/// `tansu user create` for every user and both SCRAM mechanisms, against
/// the broker on `port` (which must not require authentication).
fn create_users(program: &Path, port: u16, users: &[(&str, &str)]) -> anyhow::Result<()> {
    for (name, password) in users {
        for mechanism in [Scram::Sha256, Scram::Sha512] {
            let output = Command::new(program)
                .args(["user", "create", "--broker"])
                .arg(format!("tcp://127.0.0.1:{port}"))
                .args(["--mechanism", mechanism.tansu_name()])
                .args([name, password])
                .output()
                .with_context(|| format!("running tansu user create {name}"))?;
            // The output is not shown whole: the command line held a password.
            if !output.status.success() {
                bail!(
                    "tansu user create {name} ({}) failed with {}",
                    mechanism.sasl_mechanism(),
                    output.status
                );
            }
        }
    }
    Ok(())
}

/// The SASL SCRAM mechanisms tansu 0.6 serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    /// librdkafka's `sasl.mechanism` value.
    pub fn sasl_mechanism(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// `tansu user create --mechanism` value.
    fn tansu_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

/// The user [`shared_authenticated`] knows.
pub const SASL_USER: &str = "orderflow";
/// Its password: with `;`-free, space-free characters that still need care
/// in a shell or a URL, so a test that passes it through
/// `ORDERFLOW_KAFKA_CONFIG` proves they arrive unchanged.
pub const SASL_PASSWORD: &str = "s3cr3t-Pa$$w0rd=with/odd+chars";

/// The librdkafka properties to log in to an authenticated broker as `user`
/// with `mechanism`, over plaintext (`SASL_PLAINTEXT`).
pub fn sasl_config(mechanism: Scram, user: &str, password: &str) -> Vec<(String, String)> {
    [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", mechanism.sasl_mechanism()),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The same over TLS (`SASL_SSL`) to a broker behind the TLS terminator of
/// `pki`: its CA to verify the broker, and the client certificate and key
/// that mutual TLS asks for. The broker's name is checked too (librdkafka's
/// default `ssl.endpoint.identification.algorithm=https`; the certificate
/// names 127.0.0.1).
pub fn sasl_ssl_config(
    mechanism: Scram,
    user: &str,
    password: &str,
    pki: &TestPki,
) -> Vec<(String, String)> {
    let mut config = sasl_config(mechanism, user, password);
    config[0].1 = "SASL_SSL".into();
    for (name, path) in [
        ("ssl.ca.location", pki.ca_cert()),
        ("ssl.certificate.location", pki.client_cert()),
        ("ssl.key.location", pki.client_key()),
    ] {
        config.push((name.to_owned(), path.display().to_string()));
    }
    config
}

/// What one start attempt made: the port clients connect to, how tansu
/// was started, the broker, and, when a TLS terminator is wanted, its bound
/// listener and whether client certificates are required.
struct Attempt {
    port: u16,
    launch: Launch,
    process: ServerProcess,
    front: Option<(std::net::TcpListener, bool)>,
}

impl Attempt {
    /// A broker clients reach directly.
    fn direct(launch: Launch, process: ServerProcess) -> Attempt {
        Attempt {
            port: launch.port,
            launch,
            process,
            front: None,
        }
    }
}

/// One `tansu broker` on `127.0.0.1:port`: in-memory storage, a SQLite file
/// in its temporary directory (with authentication), or a PostgreSQL
/// database ([`KafkaBroker::start_on_postgres`]); `port` is the TLS
/// terminator's when there is one.
pub struct KafkaBroker {
    port: u16,
    /// `tansu` and how it was started, for [`start_again`](Self::start_again).
    program: PathBuf,
    launch: Launch,
    /// The TLS terminator in front, and the CA and certificates it uses.
    tls: Option<(tls_front::TlsFront, TestPki)>,
    // Field order: the broker stops before its directory is removed.
    /// `None` between [`stop`](Self::stop) and [`start_again`](Self::start_again).
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> anyhow::Result<KafkaBroker> {
        KafkaBroker::start_with(None, |program, dir| {
            let launch = Launch::new(MEMORY_STORAGE);
            let process = spawn(program, dir, &launch)?;
            Ok(Attempt::direct(launch, process))
        })
    }

    /// Starts a broker whose storage is a new database on `server`
    /// (`--storage-engine postgres://…`), so that [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again) keep its topics, records and
    /// committed group offsets. tansu does not create its tables: the
    /// schema of its repository ([`TANSU_POSTGRES_SCHEMA`]) is applied to
    /// the database first.
    ///
    /// Its clients must set [`POSTGRES_ENGINE_CLIENT_CONFIG`]
    /// (`isolation.level=read_uncommitted`): see the module's notes.
    pub async fn start_on_postgres(server: &PostgresServer) -> anyhow::Result<KafkaBroker> {
        let url = server
            .create_database()
            .await
            .context("creating tansu's database")?;
        let mut db = sqlx::PgConnection::connect(&url)
            .await
            .context("connecting to tansu's database")?;
        sqlx::raw_sql(TANSU_POSTGRES_SCHEMA)
            .execute(&mut db)
            .await
            .context("creating tansu's tables")?;
        db.close().await.ok();
        tokio::task::spawn_blocking(move || {
            KafkaBroker::start_with(None, |program, dir| {
                let launch = Launch::new(&url);
                let process = spawn(program, dir, &launch)?;
                Ok(Attempt::direct(launch, process))
            })
        })
        .await
        .context("the tansu start-up thread panicked")?
    }

    /// Starts a broker that requires SASL authentication
    /// (`tansu broker --authentication`) and knows `users`
    /// (`(name, password)`), each with a SCRAM-SHA-256 and a SCRAM-SHA-512
    /// credential.
    ///
    /// Why two starts on a SQLite file instead of one on memory storage:
    /// tansu 0.6's memory storage drops SCRAM credentials (storing one does
    /// nothing, looking one up finds none, so nobody could log in), and
    /// `tansu user create` talks to a running broker without authenticating,
    /// which a broker with `--authentication` refuses. So the users are
    /// created on a broker without authentication over `sqlite://tansu.db`
    /// in the broker's directory, that broker is stopped, and a second one
    /// is started with `--authentication` on the same file (about a second
    /// in all). SASL/PLAIN is not offered: tansu builds its SASL server
    /// (rsasl) with SCRAM and OAUTHBEARER only.
    pub fn start_authenticated(users: &[(&str, &str)]) -> anyhow::Result<KafkaBroker> {
        KafkaBroker::start_with(None, |program, dir| {
            let (launch, process) = spawn_authenticated(program, dir, users, None)?;
            Ok(Attempt::direct(launch, process))
        })
    }

    /// [`KafkaBroker::start_authenticated`], reachable only through a TLS
    /// terminator with `pki`'s server certificate (for 127.0.0.1 and
    /// localhost), which tansu advertises as its address; with
    /// `client_auth`, the terminator also requires a client certificate
    /// signed by `pki`'s CA (mutual TLS). See the module's notes on why.
    pub fn start_authenticated_behind_tls(
        users: &[(&str, &str)],
        pki: TestPki,
        client_auth: bool,
    ) -> anyhow::Result<KafkaBroker> {
        KafkaBroker::start_with(Some(pki), |program, dir| {
            // Bound first: tansu must advertise its port from the start.
            let front = std::net::TcpListener::bind("127.0.0.1:0")
                .context("binding the TLS terminator's port")?;
            let front_port = front.local_addr()?.port();
            let (launch, process) = spawn_authenticated(program, dir, users, Some(front_port))?;
            Ok(Attempt {
                port: front_port,
                launch,
                process,
                front: Some((front, client_auth)),
            })
        })
    }

    /// Runs `attempt` in a fresh directory up to three times: a port
    /// someone grabbed between `free_port` and the bind means another try.
    /// An attempt that asks for a TLS terminator gets one with `pki`, in
    /// front of the broker's port.
    fn start_with(
        pki: Option<TestPki>,
        attempt: impl Fn(&Path, &Path) -> anyhow::Result<Attempt>,
    ) -> anyhow::Result<KafkaBroker> {
        let program = tansu()?;
        let mut last_error = None;
        for _ in 0..3 {
            let dir = broker_dir()?;
            match attempt(&program, dir.path()) {
                Ok(Attempt {
                    port,
                    launch,
                    process,
                    front,
                }) => {
                    let tls = match (front, &pki) {
                        (Some((listener, client_auth)), Some(pki)) => Some(
                            tls_front::TlsFront::start(listener, launch.port, pki, client_auth)?,
                        ),
                        _ => None,
                    };
                    return Ok(KafkaBroker {
                        port,
                        program,
                        launch,
                        tls: tls.zip(pki),
                        process: Some(process),
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Stops the broker and returns once it has exited and its port is
    /// closed. SIGTERM: tansu stops accepting connections, serves the ones
    /// it has for up to 5 s more (its shutdown patience), then exits, so
    /// this takes about 5 s while clients are connected. Its storage stays:
    /// a PostgreSQL database or SQLite file as tansu left it (memory
    /// storage is gone). The port is free until
    /// [`start_again`](Self::start_again), which a test calls soon after so
    /// nobody else takes it meanwhile. Stopping a stopped broker does
    /// nothing.
    pub fn stop(&mut self) {
        // Dropping the process closes its guard's pipe: the guard sends
        // SIGTERM and waits for tansu to exit.
        drop(self.process.take());
        crate::wait_for_port_closed(self.launch.port, Duration::from_secs(10));
    }

    /// Starts tansu again after [`stop`](Self::stop): the same port,
    /// storage and settings (a TLS terminator in front stays up throughout
    /// and reaches the new broker). Blocks until it accepts connections.
    /// Does nothing when the broker runs.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.stop();
        let process = spawn(&self.program, self.dir.path(), &self.launch)
            .with_context(|| format!("starting tansu again on port {}", self.launch.port))?;
        self.process = Some(process);
        Ok(())
    }

    /// Whether the broker is running (false after [`stop`](Self::stop)).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ServerProcess::is_running)
    }

    /// The `--storage-engine` URL: for [`start_on_postgres`](Self::start_on_postgres),
    /// the URL of tansu's database (a test may read its tables).
    pub fn storage(&self) -> &str {
        &self.launch.storage
    }

    /// The broker's log (every start of it, appended).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// The CA and certificates of the TLS terminator in front, if any.
    pub fn pki(&self) -> Option<&TestPki> {
        self.tls.as_ref().map(|(_, pki)| pki)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, the value for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `prefix + topic` for every topic in `topics` with `partitions`
    /// partitions, through `tansu topic create`. The adapter creates its own
    /// topics (`ensure_topics`); this is for tests that need topics made
    /// independently of the code under test.
    pub fn create_topics(
        &self,
        prefix: &str,
        topics: &[&str],
        partitions: i32,
    ) -> anyhow::Result<()> {
        let program = tansu()?;
        for topic in topics {
            let name = format!("{prefix}{topic}");
            let output = Command::new(&program)
                .args(["topic", "create", "--broker"])
                .arg(format!("tcp://127.0.0.1:{}", self.port))
                .arg("--partitions")
                .arg(partitions.to_string())
                .arg(&name)
                .output()
                .with_context(|| format!("running tansu topic create {name}"))?;
            if !output.status.success() {
                bail!(
                    "tansu topic create {name} failed: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(())
    }
}

/// The broker shared by every test of this test binary, started on first
/// use. It stops when the test process exits (see [`ServerProcess`]).
pub fn shared() -> anyhow::Result<&'static KafkaBroker> {
    static BROKER: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    match BROKER.get_or_init(|| KafkaBroker::start().map_err(|e| format!("{e:#}"))) {
        Ok(broker) => Ok(broker),
        Err(message) => bail!("the shared tansu broker did not start: {message}"),
    }
}

/// The broker that requires SASL SCRAM, shared by every test of this test
/// binary that needs one (started on first use, as [`shared`]). It knows
/// [`SASL_USER`] with [`SASL_PASSWORD`], for SCRAM-SHA-256 and -512.
pub fn shared_authenticated() -> anyhow::Result<&'static KafkaBroker> {
    static BROKER: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    let started = BROKER.get_or_init(|| {
        KafkaBroker::start_authenticated(&[(SASL_USER, SASL_PASSWORD)])
            .map_err(|e| format!("{e:#}"))
    });
    match started {
        Ok(broker) => Ok(broker),
        Err(message) => bail!("the shared authenticating tansu broker did not start: {message}"),
    }
}

/// The broker of [`shared_authenticated`], behind a TLS terminator that
/// requires a client certificate ([`KafkaBroker::start_authenticated_behind_tls`]
/// with mutual TLS), shared the same way; [`KafkaBroker::pki`] has its CA and
/// the client certificate ([`sasl_ssl_config`] uses them).
pub fn shared_authenticated_tls() -> anyhow::Result<&'static KafkaBroker> {
    static BROKER: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    let started = BROKER.get_or_init(|| {
        TestPki::generate()
            .and_then(|pki| {
                KafkaBroker::start_authenticated_behind_tls(
                    &[(SASL_USER, SASL_PASSWORD)],
                    pki,
                    true,
                )
            })
            .map_err(|e| format!("{e:#}"))
    });
    match started {
        Ok(broker) => Ok(broker),
        Err(message) => bail!("the shared TLS-fronted tansu broker did not start: {message}"),
    }
}

/// A topic and group prefix no other test uses: `t<uuid>.`.
pub fn fresh_prefix() -> String {
    format!("t{}.", uuid::Uuid::now_v7().simple())
}
