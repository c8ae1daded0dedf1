//! The system under test: an `orderflow serve --demo` child process with a
//! fresh data dir and port per architecture, or a server that is already
//! running (`--target URL`).
//!
//! A child process, not an in-process app, so the load generator's own work
//! is measured apart from the server's and a stalled server cannot stall the
//! generator's clock.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::BenchError;

/// What is measured: one of the two architectures the notes compare, or a
/// deployment that is already running (`--target URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    /// `v1`, `v2`, or `target`: the column header of the table.
    pub name: Cow<'static, str>,
    /// What it is, without the name (the table prints `name: label`).
    pub label: Cow<'static, str>,
    pub cache: &'static str,
    pub side_effects: &'static str,
}

/// The notes' version 1: no cache, no queue.
pub const V1: Architecture = Architecture {
    name: Cow::Borrowed("v1"),
    label: Cow::Borrowed("cache off, inline side effects"),
    cache: "off",
    side_effects: "inline",
};

/// The notes' version 2: cache and events.
pub const V2: Architecture = Architecture {
    name: Cow::Borrowed("v2"),
    label: Cow::Borrowed("cache on, events"),
    cache: "on",
    side_effects: "events",
};

impl Architecture {
    /// A running deployment: the bench does not know (or set) its switches.
    pub fn target(url: &str) -> Self {
        Self {
            name: Cow::Borrowed("target"),
            label: Cow::Owned(format!("the deployment at {}", url.trim_end_matches('/'))),
            cache: "as deployed",
            side_effects: "as deployed",
        }
    }

    /// `name: label`, for headings and legends.
    pub fn title(&self) -> String {
        format!("{}: {}", self.name, self.label)
    }
}

/// A provider made to fail part of its calls: `sms=0.05`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailSpec {
    pub provider: String,
    pub rate: f64,
}

impl std::str::FromStr for FailSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (provider, rate) = s
            .split_once('=')
            .ok_or("expected PROVIDER=RATE, e.g. sms=0.05")?;
        let provider = provider.trim().to_lowercase();
        if !["email", "sms", "push", "payment"].contains(&provider.as_str()) {
            return Err(format!(
                "unknown provider {provider:?}: use email, sms, push or payment"
            ));
        }
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("{rate:?} is not a number"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err("the rate must be between 0 and 1".into());
        }
        Ok(Self { provider, rate })
    }
}

impl std::fmt::Display for FailSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.provider, self.rate)
    }
}

const ADMIN_EMAIL: &str = "bench-admin@example.com";

/// Which process [`Server::start_role`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `orderflow serve --demo`: the API and every consumer group.
    Serve,
    /// `orderflow api` on a seeded database: the consumer groups run
    /// elsewhere (see [`Server::worker_command`]).
    Api,
}

/// A running server the bench talks to.
pub struct Server {
    pub base_url: String,
    /// Admin credentials of a server the bench started (to read consumer lag).
    pub admin: Option<(String, String)>,
    child: Option<Child>,
    /// Where the process keeps its data (None for an external server).
    data_path: Option<PathBuf>,
    /// The data dir, removed when the server that created it is dropped.
    _owned_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server that is already running; the bench neither starts nor stops it.
    pub fn external(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            admin: None,
            child: None,
            data_path: None,
            _owned_dir: None,
        }
    }

    /// Starts `binary serve --demo` for `architecture` on a free loopback
    /// port with a fresh data dir, and waits until `/readyz` answers.
    pub async fn start(
        binary: &Path,
        architecture: &Architecture,
        failures: &[FailSpec],
    ) -> Result<Self, BenchError> {
        Self::start_with(binary, architecture, failures, &[]).await
    }

    /// [`Server::start`] with `env` applied last, over the bench's
    /// defaults: `Some` sets a variable, `None` unsets it (the server's own
    /// default then applies).
    pub async fn start_with(
        binary: &Path,
        architecture: &Architecture,
        failures: &[FailSpec],
        env: &[(&str, Option<&str>)],
    ) -> Result<Self, BenchError> {
        Self::start_role(binary, Role::Serve, architecture, failures, env).await
    }

    /// [`Server::start_with`] for `role`: `serve --demo`, or the demo data
    /// seeded (`orderflow seed`, run to its end) and then `api` alone.
    pub async fn start_role(
        binary: &Path,
        role: Role,
        architecture: &Architecture,
        failures: &[FailSpec],
        env: &[(&str, Option<&str>)],
    ) -> Result<Self, BenchError> {
        let data_dir =
            tempfile::tempdir().map_err(|e| BenchError::Server(format!("temp dir: {e}")))?;
        let admin_password = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let args: &[&str] = match role {
            Role::Serve => &["serve", "--demo"],
            Role::Api => {
                let log = data_dir.path().join("seed.log");
                let status = Self::command(
                    binary,
                    &["seed"],
                    data_dir.path(),
                    &log,
                    architecture,
                    failures,
                    env,
                    &admin_password,
                )?
                .status()
                .await
                .map_err(|e| BenchError::Server(format!("orderflow seed: {e}")))?;
                if !status.success() {
                    let output = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(BenchError::Server(format!(
                        "orderflow seed exited with {status}:\n{output}"
                    )));
                }
                &["api"]
            }
        };
        let mut server = Self::spawn(
            binary,
            args,
            data_dir.path(),
            "server.log",
            architecture,
            failures,
            env,
            admin_password,
        )
        .await?;
        server._owned_dir = Some(data_dir);
        Ok(server)
    }

    /// Another process on this server's data dir (its database, signing
    /// keys and admin) running only the HTTP API (`orderflow api`), with
    /// `env` applied as in [`Server::start_with`]: a second API process of
    /// the same shop.
    pub async fn api_beside(
        &self,
        binary: &Path,
        architecture: &Architecture,
        env: &[(&str, Option<&str>)],
    ) -> Result<Self, BenchError> {
        let (Some(data_dir), Some((_, password))) = (&self.data_path, &self.admin) else {
            return Err(BenchError::Server(
                "a second API process needs a server the bench started".into(),
            ));
        };
        let log = format!("api-{}.log", uuid::Uuid::new_v4().simple());
        Self::spawn(
            binary,
            &["api"],
            data_dir,
            &log,
            architecture,
            &[],
            env,
            password.clone(),
        )
        .await
    }

    /// Starts `binary ARGS` on a free loopback port with `data_dir`, its
    /// output in `data_dir/log_name`, and waits until `/readyz` answers.
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        binary: &Path,
        args: &[&str],
        data_dir: &Path,
        log_name: &str,
        architecture: &Architecture,
        failures: &[FailSpec],
        env: &[(&str, Option<&str>)],
        admin_password: String,
    ) -> Result<Self, BenchError> {
        let port = free_port()?;
        let log_path = data_dir.join(log_name);
        let mut command = Self::command(
            binary,
            args,
            data_dir,
            &log_path,
            architecture,
            failures,
            env,
            &admin_password,
        )?;
        command.env("ORDERFLOW_LISTEN", format!("127.0.0.1:{port}"));
        let child = crate::priority::at_server_priority(move || command.spawn())
            .await?
            .map_err(|e| BenchError::Server(format!("starting {}: {e}", binary.display())))?;
        let server = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            admin: Some((ADMIN_EMAIL.to_owned(), admin_password)),
            child: Some(child),
            data_path: Some(data_dir.to_owned()),
            _owned_dir: None,
        };
        server
            .wait_ready(Duration::from_secs(60), &log_path)
            .await?;
        Ok(server)
    }

    /// `binary ARGS` with the bench's settings for `architecture` and
    /// `failures`, then `env` (as in [`Server::start_with`]), its output
    /// appended to `log_path`; killed when dropped.
    #[allow(clippy::too_many_arguments)]
    fn command(
        binary: &Path,
        args: &[&str],
        data_dir: &Path,
        log_path: &Path,
        architecture: &Architecture,
        failures: &[FailSpec],
        env: &[(&str, Option<&str>)],
        admin_password: &str,
    ) -> Result<Command, BenchError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| BenchError::Server(format!("log file {}: {e}", log_path.display())))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("ORDERFLOW_DATA_DIR", data_dir)
            .env("ORDERFLOW_CACHE", architecture.cache)
            .env("ORDERFLOW_SIDE_EFFECTS", architecture.side_effects)
            // The bench registers its shoppers from one IP: no per-IP limits.
            .env("ORDERFLOW_AUTH_RATE_PER_SEC", "0")
            .env("ORDERFLOW_RATE_PER_SEC", "0")
            .env("ORDERFLOW_RATE_LIMITS", "off")
            // Each bench shopper orders many times a minute, which the
            // standard fraud rules would hold: the check still judges and
            // remembers every order (its cost is measured), it never holds.
            .env("ORDERFLOW_FRAUD_MAX_ORDERS", "1000000")
            .env("ORDERFLOW_FRAUD_MAX_TOTAL_CENTS", "1000000000000")
            .env("ORDERFLOW_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("ORDERFLOW_ADMIN_PASSWORD", admin_password)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone()
                    .map_err(|e| BenchError::Server(e.to_string()))?,
            ))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        for failure in failures {
            command.env(
                format!(
                    "ORDERFLOW_SIM_{}_FAILURE_RATE",
                    failure.provider.to_uppercase()
                ),
                failure.rate.to_string(),
            );
        }
        Ok(command)
    }

    /// How to start `orderflow worker` processes (every consumer group) on
    /// this server's data dir, with `failures` and `env` applied as in
    /// [`Server::start_with`]: more members for the groups, each in a
    /// process of its own that can be killed.
    pub fn worker_command(
        &self,
        binary: &Path,
        architecture: &Architecture,
        failures: &[FailSpec],
        env: &[(&str, Option<&str>)],
    ) -> Result<WorkerCommand, BenchError> {
        let (Some(data_dir), Some((_, password))) = (&self.data_path, &self.admin) else {
            return Err(BenchError::Server(
                "a worker process needs a server the bench started".into(),
            ));
        };
        Ok(WorkerCommand {
            binary: binary.to_owned(),
            data_dir: data_dir.clone(),
            architecture: architecture.clone(),
            failures: failures.to_vec(),
            env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.map(str::to_owned)))
                .collect(),
            admin_password: password.clone(),
        })
    }

    async fn wait_ready(&self, timeout: Duration, log: &Path) -> Result<(), BenchError> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.base_url)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(BenchError::Server(format!(
                    "the server did not become ready in {timeout:?}; its log:\n{tail}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of a server the bench started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Where the server keeps its data (None for an external server).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_path.clone()
    }

    /// Stops a started server with SIGTERM (it drains and exits), SIGKILL
    /// after 10 s.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        match self.child.take() {
            Some(mut child) => terminate(&mut child).await,
            None => Ok(()),
        }
    }
}

/// `orderflow worker` processes beside a server (see [`Server::worker_command`]).
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    binary: PathBuf,
    data_dir: PathBuf,
    architecture: Architecture,
    failures: Vec<FailSpec>,
    env: Vec<(String, Option<String>)>,
    admin_password: String,
}

impl WorkerCommand {
    /// Starts one. Its output goes to `worker.log` in the data dir
    /// (appended across restarts). It serves no HTTP, so it is not waited
    /// for; it is killed when dropped.
    pub async fn spawn(&self) -> Result<Child, BenchError> {
        let env: Vec<(&str, Option<&str>)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref()))
            .collect();
        let mut command = Server::command(
            &self.binary,
            &["worker"],
            &self.data_dir,
            &self.data_dir.join("worker.log"),
            &self.architecture,
            &self.failures,
            &env,
            &self.admin_password,
        )?;
        crate::priority::at_server_priority(move || command.spawn())
            .await?
            .map_err(|e| BenchError::Server(format!("starting a worker: {e}")))
    }
}

/// Starts a `redis-server` of its own for the servers (on a free port), at
/// the servers' priority.
pub async fn start_redis() -> Result<orderflow_testkit::redis::RedisServer, BenchError> {
    crate::priority::at_server_priority(orderflow_testkit::redis::RedisServer::start)
        .await?
        .map_err(|e| BenchError::Server(format!("redis-server: {e:#}")))
}

/// Stops a child with SIGTERM (it drains and exits), SIGKILL after 10 s.
pub async fn terminate(child: &mut Child) -> Result<(), BenchError> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(_) => Ok(()),
        Err(_) => {
            let _ = child.kill().await;
            Err(BenchError::Server(
                "the process did not stop within 10 s of SIGTERM; killed".into(),
            ))
        }
    }
}

pub(crate) fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Server(format!("no free port: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| BenchError::Server(e.to_string()))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_specs_parse_and_refuse_nonsense() {
        let spec: FailSpec = "SMS=0.05".parse().unwrap();
        assert_eq!(
            spec,
            FailSpec {
                provider: "sms".into(),
                rate: 0.05
            }
        );
        assert!("sms".parse::<FailSpec>().is_err());
        assert!("fax=0.1".parse::<FailSpec>().is_err());
        assert!("sms=2".parse::<FailSpec>().is_err());
        assert!("sms=lots".parse::<FailSpec>().is_err());
    }
}
