//! `redis-server` for tests: a standalone server, and a three-master
//! cluster joined with `redis-cli --cluster create`.
//!
//! Each server listens on a free loopback port, keeps nothing on disk
//! (`save ""`, `appendonly no`) and runs in its own temporary directory,
//! under [`ServerProcess`] so it dies with the test. A test can stop a server
//! and start it again on the same port ([`RedisServer::stop`] /
//! [`RedisServer::restart`]) to check what orderflow does while Redis is down
//! and once it is back (empty, since nothing persists).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{ServerProcess, find_program, free_port, wait_for_port};

const INSTALL_HINT: &str = "install it with `apt-get install redis-server`";
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn redis_server() -> anyhow::Result<PathBuf> {
    find_program("redis-server", &["/usr/sbin"], INSTALL_HINT)
}

fn redis_cli() -> anyhow::Result<PathBuf> {
    find_program("redis-cli", &[], INSTALL_HINT)
}

/// One `redis-server` on `127.0.0.1:port`.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    process: Option<ServerProcess>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_node(false)
    }

    fn start_node(cluster: bool) -> anyhow::Result<RedisServer> {
        let mut dir = tempfile::Builder::new()
            .prefix("orderflow-redis-")
            .tempdir()
            .context("creating a temporary directory for redis-server")?;
        // A port someone grabbed between `free_port` and the bind: try another.
        let mut last_error = None;
        for _ in 0..3 {
            let mut server = RedisServer {
                port: free_port(),
                dir,
                cluster,
                process: None,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_error = Some(e);
                    dir = server.dir;
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let program = redis_server()?;
        let port = self.port.to_string();
        let mut args: Vec<OsString> = [
            "--port",
            port.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(self.dir.path().as_os_str().to_owned());
        if self.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(OsString::from),
            );
        }
        let log = self.dir.path().join("redis.log");
        let process = ServerProcess::spawn(
            &format!("redis-server:{port}"),
            &program,
            &args,
            None,
            self.dir.path(),
            &log,
            "TERM",
        )?;
        self.process = Some(process);
        if let Err(e) = wait_for_port(self.port, START_TIMEOUT) {
            self.process = None;
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("redis-server did not start on port {port}: {e}\n{log}");
        }
        // Accepting TCP is not yet answering: wait for PING.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.cli(&["PING"]).is_ok_and(|out| out.trim() == "PONG") {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "redis-server on {port} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server. Its port is free until [`restart`](Self::restart)
    /// (which a test calls soon after, so nobody else takes it meanwhile).
    pub fn stop(&mut self) {
        self.process = None;
        // Wait until the port is closed, so "down" really is down.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            self.stop();
        }
        self.launch()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ServerProcess::is_running)
    }

    /// Deletes every key.
    pub fn flushall(&self) -> anyhow::Result<()> {
        let out = self.cli(&["FLUSHALL"])?;
        ensure!(out.trim() == "OK", "FLUSHALL answered {out:?}");
        Ok(())
    }

    /// Runs `redis-cli -p PORT args…` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cli(self.port, args)
    }
}

fn run_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(redis_cli()?)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli")?;
    ensure!(
        output.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Three masters (no replicas) covering all 16384 slots.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them, and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> anyhow::Result<RedisCluster> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_node(true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = Command::new(redis_cli()?)
            .args(&args)
            .output()
            .context("running redis-cli --cluster create")?;
        ensure!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn wait_until_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let info = node.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "node {} never reached cluster_state:ok:\n{info}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Stops node `index` and starts it again on its port. It keeps its
    /// cluster configuration (`nodes.conf`), so it comes back owning its
    /// slots, empty; returns once the cluster reports `cluster_state:ok`.
    pub fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.nodes[index].restart()?;
        self.wait_until_ok()
    }

    /// Deletes every key on every master.
    pub fn flushall(&self) -> anyhow::Result<()> {
        self.nodes.iter().try_for_each(RedisServer::flushall)
    }
}

/// The URL of the standalone server shared by every test of this test
/// binary, started on first use (it stops when the test process exits). A
/// test that stops or flushes its server starts its own instead.
pub fn shared_standalone_url() -> String {
    static SERVER: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| RedisServer::start().expect("starting redis-server"))
        .url()
}

/// The URL of the three-master cluster shared by every test of this test
/// binary, started on first use.
pub fn shared_cluster_url() -> String {
    static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| RedisCluster::start().expect("starting a Redis cluster"))
        .url()
}

/// A key prefix no other test uses: `test-<uuid>:`.
pub fn fresh_prefix() -> String {
    format!("test-{}:", uuid::Uuid::now_v7().simple())
}
