//! A real PostgreSQL server for tests: `initdb` into a temporary directory,
//! `postgres` on a free loopback port, and a fresh database per test.
//!
//! One server per test process is enough (databases isolate the tests from
//! each other) and much cheaper than one per test, so [`PostgresServer::shared`]
//! starts it once, on first use. The server runs under
//! [`ServerProcess`](crate::ServerProcess), so it stops when the test process
//! ends, however it ends.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (as in CI
//! containers), `initdb` and `postgres` run as the `postgres` user, and the
//! data and socket directories are handed to it with `chown`.
//!
//! A test can stop its own server and start it again on the same port with
//! the same data ([`PostgresServer::stop`] / [`PostgresServer::start_again`]),
//! to check what orderflow does while the database is down and once it is
//! back.
//!
//! Durability is switched off (`fsync`, `synchronous_commit`,
//! `full_page_writes`): the data is thrown away after the run, and the tests
//! are about behaviour, not crash safety of the test server.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection;

use crate::{ServerProcess, find_program, free_port};

/// Where Debian puts the server binaries (they are not on `PATH`).
const DEBIAN_BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];
const INSTALL_HINT: &str = "install PostgreSQL 15 (Debian: apt-get install postgresql-15)";
/// How long a fresh cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Prefix of the temporary directories, so leftovers of earlier runs can be
/// recognised and removed.
const DIR_PREFIX: &str = "orderflow-pg-";
/// The superuser `initdb` creates (trust authentication on loopback).
const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server. Dropping it stops the server and removes its
/// data directory.
pub struct PostgresServer {
    port: u16,
    /// `postgres` and `pg_isready`, next to `initdb`.
    postgres: PathBuf,
    pg_isready: PathBuf,
    /// The user the server runs as (`postgres` when the tests run as root).
    run_as: Option<&'static str>,
    // Field order: the process stops before its directory is removed.
    /// `None` between [`stop`](Self::stop) and [`start_again`](Self::start_again).
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl PostgresServer {
    /// The server shared by every test of this process, started on first
    /// call. A failed start is remembered and reported to every caller.
    pub fn shared() -> anyhow::Result<&'static PostgresServer> {
        static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PostgresServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Initialises a new cluster and starts a server on a free loopback port.
    /// Blocks until the server accepts connections (a few seconds).
    pub fn start() -> anyhow::Result<PostgresServer> {
        // Follow symlinks (`/usr/local/bin/initdb -> /usr/lib/postgresql/…`):
        // the other binaries are next to the real one.
        let found = find_program("initdb", DEBIAN_BIN_DIRS, INSTALL_HINT)?;
        let initdb = std::fs::canonicalize(&found)
            .with_context(|| format!("resolving {}", found.display()))?;
        let bin = initdb
            .parent()
            .context("initdb has no parent directory")?
            .to_path_buf();
        let postgres = bin.join("postgres");
        let pg_isready = bin.join("pg_isready");
        for needed in [&postgres, &pg_isready] {
            if !needed.is_file() {
                bail!(
                    "{} is missing next to {}: {INSTALL_HINT} (scripts/test.sh installs it)",
                    needed.display(),
                    initdb.display()
                );
            }
        }
        remove_stale_dirs();

        let run_as = running_as_root().then_some(SUPERUSER);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating the PostgreSQL temp dir")?;
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())?;
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets)?;
        if let Some(user) = run_as {
            chown(user, dir.path())?;
        }

        let mut command = Command::new(&initdb);
        command.args(["--auth=trust", "--encoding=UTF8", "--no-sync", "--username"]);
        command.arg(SUPERUSER).arg("-D").arg(&data);
        let output = as_user(command, run_as, &initdb)
            .current_dir(dir.path())
            .output()
            .with_context(|| format!("running {}", initdb.display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        // A free port can be taken by someone else before the server binds
        // it; try a few.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            match Self::run(
                &postgres,
                &pg_isready,
                run_as,
                dir.path(),
                &data,
                &sockets,
                port,
            ) {
                Ok(process) => {
                    return Ok(PostgresServer {
                        port,
                        postgres,
                        pg_isready,
                        run_as,
                        process: Some(process),
                        dir,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn run(
        postgres: &Path,
        pg_isready: &Path,
        run_as: Option<&str>,
        dir: &Path,
        data: &Path,
        sockets: &Path,
        port: u16,
    ) -> anyhow::Result<ServerProcess> {
        let mut args: Vec<OsString> = vec!["-D".into(), data.into(), "-p".into()];
        args.push(port.to_string().into());
        args.push("-k".into());
        args.push(sockets.into());
        for setting in [
            "listen_addresses=127.0.0.1",
            "max_connections=300",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "log_min_messages=warning",
        ] {
            args.push("-c".into());
            args.push(setting.into());
        }
        let log = dir.join("postgres.log");
        let mut process = ServerProcess::spawn(
            "postgres", postgres, &args, run_as, dir, &log,
            // Fast shutdown: roll back sessions, stop at once.
            "INT",
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(pg_isready)
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .status()
                .with_context(|| format!("running {}", pg_isready.display()))?;
            if ready.success() {
                return Ok(process);
            }
            if !process.is_running() || Instant::now() >= deadline {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "PostgreSQL did not start on port {port} within {START_TIMEOUT:?}; its log:\n{tail}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open sessions are rolled back and
    /// their clients disconnected) and returns once it has exited and its
    /// port is closed. The data directory stays; the port is free until
    /// [`start_again`](Self::start_again), which a test calls soon after so
    /// nobody else takes it meanwhile. Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        // Dropping the process closes its guard's pipe: the guard sends
        // SIGINT (fast shutdown) and waits for the server to exit.
        drop(self.process.take());
        crate::wait_for_port_closed(self.port, Duration::from_secs(10));
    }

    /// Starts the server again after [`stop`](Self::stop): the same data
    /// directory (every database and row as the shutdown left them), the
    /// same port and settings. Blocks until it accepts connections. Does
    /// nothing when the server runs.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.as_mut().is_some_and(ServerProcess::is_running) {
            return Ok(());
        }
        self.stop();
        let dir = self.dir.path();
        let process = Self::run(
            &self.postgres,
            &self.pg_isready,
            self.run_as,
            dir,
            &dir.join("data"),
            &dir.join("sockets"),
            self.port,
        )
        .with_context(|| format!("starting PostgreSQL again on port {}", self.port))?;
        self.process = Some(process);
        Ok(())
    }

    /// Whether the server process is running (false after [`stop`](Self::stop)).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ServerProcess::is_running)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database with a unique name and returns its URL.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .with_context(|| format!("connecting to the test server on port {}", self.port))?;
        // The name is generated above (letters, digits, underscore): safe to
        // splice, and CREATE DATABASE takes no bind parameters.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await.ok();
        Ok(self.url(&name))
    }
}

/// A fresh database on the shared server: the one-liner tests use. The
/// first call starts the server on a blocking thread (it waits for the
/// server with sleeps), so the async runtime keeps running meanwhile.
pub async fn fresh_database() -> anyhow::Result<String> {
    let server = tokio::task::spawn_blocking(PostgresServer::shared)
        .await
        .context("the PostgreSQL start-up thread panicked")??;
    server.create_database().await
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown(user: &str, path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()
        .context("running chown")?;
    anyhow::ensure!(
        status.success(),
        "chown {user} {} failed ({status}); does the `{user}` user exist? {INSTALL_HINT}",
        path.display()
    );
    Ok(())
}

/// `command` as `user` through `setpriv` (as `ServerProcess` does), or as is.
fn as_user(command: Command, user: Option<&str>, program: &Path) -> Command {
    let Some(user) = user else { return command };
    let mut wrapped = Command::new("setpriv");
    wrapped
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--init-groups")
        .arg("--")
        .arg(program)
        .args(command.get_args());
    wrapped
}

/// Removes data directories left by earlier test processes. The shared
/// server lives in a static, which is never dropped, so its directory
/// outlives the process; the next run cleans it up once its owner is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path: PathBuf = entry.path();
        // A directory another process is setting up right now may not have
        // its owner.pid yet: leave young ones alone.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < Duration::from_secs(120));
        if young {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner.pid")).unwrap_or_default();
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        // Also give the server a moment after its owner died (it stops on
        // the closed pipe): only remove when no postmaster.pid is left or
        // its process is gone too.
        let server_alive = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive && !server_alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
