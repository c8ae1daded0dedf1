//! `redis-server` for tests: a standalone server, and a three-master
//! cluster joined with `redis-cli --cluster create`.
//!
//! Each server listens on a free loopback port, keeps nothing on disk
//! (`save ""`, `appendonly no`) and runs in its own temporary directory,
//! under [`ServerProcess`] so it dies with the test. A test can stop a server
//! and start it again on the same port ([`RedisServer::stop`] /
//! [`RedisServer::restart`]) to check what orderflow does while Redis is down
//! and once it is back (empty, since nothing persists).
//!
//! Secured servers ([`RedisServer::start_secured`],
//! [`RedisCluster::start_secured`]) are what the README's Security section
//! asks for: TLS only (`port 0`, `tls-port`), with a CA and certificates
//! made in the test ([`TestPki`]), and the shipped ACL file
//! (`deploy/redis/orderflow.acl`) with only its two password placeholders
//! filled in. orderflow connects as the ACL's `orderflow` user; the harness
//! itself (`redis-cli`: PING, cluster creation, FLUSHALL) as its `admin`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::pki::TestPki;
use crate::{ServerProcess, find_program, free_port, wait_for_port};

const INSTALL_HINT: &str = "install it with `apt-get install redis-server`";
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn redis_server() -> anyhow::Result<PathBuf> {
    find_program("redis-server", &["/usr/sbin"], INSTALL_HINT)
}

fn redis_cli() -> anyhow::Result<PathBuf> {
    find_program("redis-cli", &[], INSTALL_HINT)
}

/// The ACL file orderflow ships, as the tests load it.
pub const SHIPPED_ACL: &str = include_str!("../../../deploy/redis/orderflow.acl");

/// The password placeholders of [`SHIPPED_ACL`], each replaced with a fresh
/// password when a secured server starts.
const ORDERFLOW_PASSWORD_PLACEHOLDER: &str = ">ORDERFLOW_PASSWORD_CHANGE_ME";
const ADMIN_PASSWORD_PLACEHOLDER: &str = ">ADMIN_PASSWORD_CHANGE_ME";

/// What a secured server starts with: its certificates, its ACL (passwords
/// filled in) and whether clients must present a certificate.
#[derive(Clone)]
pub struct RedisSecurity {
    pki: Arc<TestPki>,
    acl: String,
    orderflow_password: String,
    admin_password: String,
    client_certs_required: bool,
}

impl RedisSecurity {
    /// A fresh test CA and the shipped ACL with fresh passwords; clients
    /// must present a certificate signed by the CA (`tls-auth-clients yes`,
    /// Redis's default).
    pub fn shipped() -> anyhow::Result<RedisSecurity> {
        let orderflow_password = uuid::Uuid::new_v4().simple().to_string();
        let admin_password = uuid::Uuid::new_v4().simple().to_string();
        let mut acl = SHIPPED_ACL.to_owned();
        for (placeholder, password) in [
            (ORDERFLOW_PASSWORD_PLACEHOLDER, &orderflow_password),
            (ADMIN_PASSWORD_PLACEHOLDER, &admin_password),
        ] {
            // Exactly once, or the test would load another ACL than the one shipped.
            ensure!(
                acl.matches(placeholder).count() == 1,
                "deploy/redis/orderflow.acl must hold {placeholder} exactly once"
            );
            acl = acl.replace(placeholder, &format!(">{password}"));
        }
        Ok(RedisSecurity {
            pki: Arc::new(TestPki::generate()?),
            acl,
            orderflow_password,
            admin_password,
            client_certs_required: true,
        })
    }

    /// The same, with `rule` of the `orderflow` user's ACL replaced by
    /// `by` (`""` removes it: a user lacking a command orderflow needs).
    /// Fails when the user has no such rule, so a test never checks an ACL
    /// it did not mean to.
    pub fn replacing(mut self, rule: &str, by: &str) -> anyhow::Result<RedisSecurity> {
        let line = self
            .acl
            .lines()
            .find(|line| line.starts_with("user orderflow "))
            .context("the ACL has no user orderflow")?;
        let rules: Vec<&str> = line.split(' ').collect();
        ensure!(rules.contains(&rule), "user orderflow has no rule {rule}");
        let edited: Vec<&str> = rules
            .iter()
            .map(|r| if *r == rule { by } else { r })
            .filter(|r| !r.is_empty())
            .collect();
        self.acl = self.acl.replace(line, &edited.join(" "));
        Ok(self)
    }

    /// Server-only TLS (`tls-auth-clients no`): clients check the server's
    /// certificate and present none, as with most managed Redis services.
    pub fn without_client_certs(mut self) -> RedisSecurity {
        self.client_certs_required = false;
        self
    }

    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The ACL user orderflow connects as.
    pub fn orderflow_user(&self) -> (&str, &str) {
        ("orderflow", &self.orderflow_password)
    }

    /// `redis-server` arguments for TLS only, the certificates and the ACL
    /// file `acl_file`.
    fn server_args(&self, port: &str, acl_file: &std::path::Path, cluster: bool) -> Vec<OsString> {
        let auth_clients = if self.client_certs_required {
            "yes"
        } else {
            "no"
        };
        let mut args: Vec<OsString> = ["--port", "0", "--tls-port", port]
            .map(OsString::from)
            .to_vec();
        for (flag, path) in [
            ("--tls-cert-file", self.pki.server_cert()),
            ("--tls-key-file", self.pki.server_key()),
            ("--tls-ca-cert-file", self.pki.ca_cert()),
            ("--aclfile", acl_file.to_owned()),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.extend(["--tls-auth-clients", auth_clients].map(OsString::from));
        if cluster {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(OsString::from));
        }
        args
    }

    /// Makes `redis-cli` speak TLS (with the client certificate) and log in
    /// as the ACL's `admin` (the password through the environment, so it is
    /// not on a command line).
    fn cli_options(&self, cli: &mut Command) {
        cli.arg("--tls")
            .arg("--cacert")
            .arg(self.pki.ca_cert())
            .arg("--cert")
            .arg(self.pki.client_cert())
            .arg("--key")
            .arg(self.pki.client_key())
            .args(["--user", "admin"])
            .env("REDISCLI_AUTH", &self.admin_password);
    }
}

/// A free port for a cluster node: at most 55535, since the node's cluster
/// bus listens 10000 above it (redis-server refuses to start otherwise, and
/// the kernel hands out ports up to 60999).
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 {
            return port;
        }
    }
}

/// One `redis-server` on `127.0.0.1:port`.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    security: Option<RedisSecurity>,
    process: Option<ServerProcess>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_node(false, None)
    }

    /// Starts a standalone server that speaks TLS only, with `security`'s
    /// certificates and ACL.
    pub fn start_secured(security: RedisSecurity) -> anyhow::Result<RedisServer> {
        Self::start_node(false, Some(security))
    }

    fn start_node(cluster: bool, security: Option<RedisSecurity>) -> anyhow::Result<RedisServer> {
        let mut dir = tempfile::Builder::new()
            .prefix("orderflow-redis-")
            .tempdir()
            .context("creating a temporary directory for redis-server")?;
        // A port someone grabbed between `free_port` and the bind: try another.
        let mut last_error = None;
        for _ in 0..3 {
            let mut server = RedisServer {
                port: if cluster { cluster_port() } else { free_port() },
                dir,
                cluster,
                security: security.clone(),
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
        let mut args = match &self.security {
            None => vec![OsString::from("--port"), OsString::from(&port)],
            Some(security) => {
                let acl_file = self.dir.path().join("users.acl");
                std::fs::write(&acl_file, &security.acl).context("writing the ACL file")?;
                security.server_args(&port, &acl_file, self.cluster)
            }
        };
        args.extend(
            [
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
            .map(OsString::from),
        );
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

    /// `redis://127.0.0.1:PORT`, or for a secured server
    /// `rediss://orderflow:PASSWORD@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.security {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(security) => {
                let (user, password) = security.orderflow_user();
                format!("rediss://{user}:{password}@127.0.0.1:{}", self.port)
            }
        }
    }

    /// The certificates and ACL of a secured server.
    pub fn security(&self) -> Option<&RedisSecurity> {
        self.security.as_ref()
    }

    /// Stops the server. Its port is free until [`restart`](Self::restart)
    /// (which a test calls soon after, so nobody else takes it meanwhile).
    pub fn stop(&mut self) {
        self.process = None;
        // Wait until the port is closed, so "down" really is down.
        crate::wait_for_port_closed(self.port, Duration::from_secs(10));
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

    /// Runs `redis-cli -p PORT args…` (as `admin` over TLS on a secured
    /// server) and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = cli_command(self.security.as_ref())?
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
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
}

/// `redis-cli`, speaking TLS as `admin` when the servers are secured.
fn cli_command(security: Option<&RedisSecurity>) -> anyhow::Result<Command> {
    let mut cli = Command::new(redis_cli()?);
    if let Some(security) = security {
        security.cli_options(&mut cli);
    }
    Ok(cli)
}

/// Three masters (no replicas) covering all 16384 slots.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them, and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> anyhow::Result<RedisCluster> {
        Self::start_nodes(None)
    }

    /// The same, TLS only (the cluster bus too) and with `security`'s ACL on
    /// every node.
    pub fn start_secured(security: RedisSecurity) -> anyhow::Result<RedisCluster> {
        Self::start_nodes(Some(security))
    }

    fn start_nodes(security: Option<RedisSecurity>) -> anyhow::Result<RedisCluster> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_node(true, security.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = cli_command(security.as_ref())?
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

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, or for a
    /// secured cluster `rediss+cluster://orderflow:PASSWORD@127.0.0.1:P1,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        match self.security() {
            None => format!("redis+cluster://{}", hosts.join(",")),
            Some(security) => {
                let (user, password) = security.orderflow_user();
                format!("rediss+cluster://{user}:{password}@{}", hosts.join(","))
            }
        }
    }

    /// The certificates and ACL of a secured cluster.
    pub fn security(&self) -> Option<&RedisSecurity> {
        self.nodes[0].security()
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

/// The secured (TLS, shipped ACL) standalone server shared by every test of
/// this test binary, started on first use.
pub fn shared_secured_standalone() -> &'static RedisServer {
    static SERVER: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let security = RedisSecurity::shipped().expect("making the test certificates");
        RedisServer::start_secured(security).expect("starting a TLS redis-server")
    })
}

/// The secured three-master cluster shared by every test of this test
/// binary, started on first use.
pub fn shared_secured_cluster() -> &'static RedisCluster {
    static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        let security = RedisSecurity::shipped().expect("making the test certificates");
        RedisCluster::start_secured(security).expect("starting a TLS Redis cluster")
    })
}

/// A key prefix no other test uses: `test-<uuid>:`.
pub fn fresh_prefix() -> String {
    format!("test-{}:", uuid::Uuid::now_v7().simple())
}
