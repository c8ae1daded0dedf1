//! The test harness for the scaled adapters: real servers, never mocks.
//!
//! Each server is started as a child process on a free loopback port, in a
//! fresh temporary directory, and stopped (and its directory removed) when
//! its handle is dropped. A binary that is missing is an error that says how
//! to install it (`scripts/test.sh` installs everything), never a skip.
//!
//! Map:
//! - [`postgres`]: PostgreSQL 15 (`initdb` / `pg_ctl` as the `postgres`
//!   user when running as root) and a fresh database per test.
//! - [`redis`]: `redis-server` standalone, and a three-master cluster made
//!   with `redis-cli --cluster create`; each also secured (TLS only, the
//!   shipped ACL file).
//! - [`pki`]: a CA made in the test and the certificates it signs.
//! - [`kafka`]: the Kafka-protocol broker `tansu` with topics created up front.
//! - [`nginx`]: nginx with a shipped site file, rewritten only for ports
//!   and paths.
//! - [`free_port`] / [`wait_for_port`]: shared plumbing.

pub mod kafka;
pub mod nginx;
pub mod pki;
pub mod postgres;
pub mod redis;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now. The listener is dropped
/// before returning, so a server can bind it (a tiny race with other
/// processes is accepted: the callers retry start-up on a new port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral loopback port")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if accepts_connections(port) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing accepted connections on 127.0.0.1:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most `timeout`) until nothing accepts TCP connections on
/// `127.0.0.1:port` any more: a server that was told to stop really is
/// down, and its port free for a restart.
pub fn wait_for_port_closed(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while accepts_connections(port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a listener accepts a connection on `127.0.0.1:port`.
///
/// A port from [`free_port`] lies in the ephemeral range, so the kernel may
/// pick that very port as the probe's own source port: on loopback the probe
/// then connects to itself (TCP simultaneous open) although nobody listens.
/// Such a self-connection is not an answer. CI saw it: a test went on after
/// "the port is open" and its first request was refused.
fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(stream) => stream.local_addr().ok() != Some(addr),
        Err(_) => false,
    }
}

/// The path of `program` on `PATH` (or among `extra_dirs`), or an error that
/// says how to get it.
pub fn find_program(
    program: &str,
    extra_dirs: &[&str],
    install_hint: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(program));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("`{program}` was not found on PATH: {install_hint} (scripts/test.sh installs it)")
}

/// A server child process that cannot outlive the test process.
///
/// The server runs under a tiny `sh` guard whose stdin is a pipe from this
/// process: when the handle is dropped, or the test process exits or is
/// killed (statics are never dropped), the pipe closes, the guard's `read`
/// returns and it sends `stop_signal` to the server. So no test leaves a
/// PostgreSQL, Redis or broker running behind it.
pub struct ServerProcess {
    name: String,
    guard: std::process::Child,
    /// Closing this pipe is what stops the server.
    stdin: Option<std::process::ChildStdin>,
}

impl ServerProcess {
    /// Starts `program args…` (optionally as another user through
    /// `setpriv`, which execs, so the signal reaches the server itself), with
    /// stdout and stderr appended to `log`. `stop_signal` is a `kill` signal
    /// name: `TERM`, `INT`, `QUIT`, `KILL`.
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[std::ffi::OsString],
        run_as: Option<&str>,
        workdir: &std::path::Path,
        log: &std::path::Path,
        stop_signal: &str,
    ) -> anyhow::Result<ServerProcess> {
        use anyhow::Context;
        use std::process::{Command, Stdio};
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let script = format!(
            "\"$@\" & pid=$!; read _ignored; kill -{stop_signal} $pid 2>/dev/null; wait $pid"
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(name);
        if let Some(user) = run_as {
            command.args([
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
            ]);
        }
        command
            .arg(program)
            .args(args)
            .current_dir(workdir)
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let mut guard = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let stdin = guard.stdin.take();
        Ok(ServerProcess {
            name: name.to_owned(),
            guard,
            stdin,
        })
    }

    /// Whether the server (its guard) is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(None))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.guard.wait();
    }
}
