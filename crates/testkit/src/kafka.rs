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
//! The broker keeps nothing across a restart (memory storage), so tests that
//! check "resume after a restart" restart the *consumer*, not the broker.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{ServerProcess, find_program, free_port, wait_for_port};

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

/// One `tansu broker` on `127.0.0.1:port` with in-memory storage.
pub struct KafkaBroker {
    port: u16,
    dir: tempfile::TempDir,
    _process: ServerProcess,
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
        let program = tansu()?;
        let mut last_error = None;
        // A port someone grabbed between `free_port` and the bind: try another.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("orderflow-tansu-")
                .tempdir()
                .context("creating a temporary directory for tansu")?;
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let args: Vec<OsString> = [
                "broker",
                "--listener-url",
                url.as_str(),
                "--advertised-listener-url",
                url.as_str(),
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "orderflow-test",
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            let log = dir.path().join("tansu.log");
            let mut process =
                ServerProcess::spawn("tansu", &program, &args, None, dir.path(), &log, "TERM")?;
            match wait_for_port(port, START_TIMEOUT) {
                Ok(()) if process.is_running() => {
                    return Ok(KafkaBroker {
                        port,
                        dir,
                        _process: process,
                    });
                }
                Ok(()) => last_error = Some(anyhow::anyhow!("tansu exited right after start")),
                Err(e) => last_error = Some(e),
            }
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = output
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            last_error = last_error.map(|e| e.context(format!("tansu log:\n{tail}")));
        }
        Err(last_error.expect("at least one attempt"))
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

/// A topic and group prefix no other test uses: `t<uuid>.`.
pub fn fresh_prefix() -> String {
    format!("t{}.", uuid::Uuid::now_v7().simple())
}
