//! nginx (Debian's package) in front of test servers, run with a shipped
//! site file (`deploy/nginx/orderflow.conf`) rewritten only for ports and
//! paths: the upstream `server host:port` lines point at loopback ports, the
//! `listen` at a free loopback port, logs into the server's directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::{ServerProcess, find_program, free_port, wait_for_port};

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn nginx_binary() -> anyhow::Result<PathBuf> {
    find_program("nginx", &["/usr/sbin"], "install Debian's `nginx` package")
}

/// `site` (an `http {}`-level file) with its upstream servers replaced by
/// `127.0.0.1:{ports}` in order, its `listen` by `127.0.0.1:{listen}`, and
/// `/var/log/nginx/` by `log_dir`. Fails when the file does not have exactly
/// `ports.len()` upstream servers or one `listen`: the test would otherwise
/// check another layout than the one shipped.
pub fn for_loopback(
    site: &str,
    listen: u16,
    ports: &[u16],
    log_dir: &Path,
) -> anyhow::Result<String> {
    let mut servers = 0;
    let mut listens = 0;
    let mut out = String::new();
    for line in site.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(rest) = trimmed.strip_prefix("server ")
            && rest.contains(':')
            && !rest.starts_with('{')
        {
            let port = ports
                .get(servers)
                .context("the site file has more upstream servers than the test runs")?;
            let options = rest.split_once(' ').map_or("", |(_, options)| options);
            let options = options.trim_end_matches(';');
            out.push_str(&format!("{indent}server 127.0.0.1:{port} {options};\n"));
            servers += 1;
        } else if trimmed.starts_with("listen ") {
            out.push_str(&format!("{indent}listen 127.0.0.1:{listen};\n"));
            listens += 1;
        } else {
            out.push_str(&line.replace("/var/log/nginx/", &format!("{}/", log_dir.display())));
            out.push('\n');
        }
    }
    ensure!(
        servers == ports.len(),
        "the site file has {servers} upstream servers, the test runs {}",
        ports.len()
    );
    ensure!(
        listens == 1,
        "the site file has {listens} `listen` lines, not 1"
    );
    Ok(out)
}

/// The main configuration around a site file: everything in `dir`.
fn main_config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# The worker runs as root only when the master does (the tests); the
# temporary directory is not readable by anyone else.
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"
    )
}

/// A running nginx with one site.
pub struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    _process: ServerProcess,
}

impl Nginx {
    /// Checks `site` with `nginx -t` and starts nginx with it; `site` is
    /// made by `make_site(listen port, log dir)`.
    pub fn start(
        make_site: impl Fn(u16, &Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-nginx-")
            .tempdir()
            .context("creating a temporary directory for nginx")?;
        let port = free_port();
        std::fs::write(dir.path().join("site.conf"), make_site(port, dir.path())?)?;
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, main_config(dir.path()))?;
        test_config(dir.path(), &config)?;
        let args: Vec<OsString> = vec![
            "-p".into(),
            dir.path().into(),
            "-c".into(),
            config.into(),
            "-g".into(),
            "daemon off;".into(),
        ];
        let log = dir.path().join("nginx.log");
        // QUIT: nginx's graceful stop.
        let process = ServerProcess::spawn(
            "nginx",
            &nginx_binary()?,
            &args,
            None,
            dir.path(),
            &log,
            "QUIT",
        )?;
        if let Err(error) = wait_for_port(port, START_TIMEOUT) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("nginx did not start on port {port}: {error}\n{log}");
        }
        Ok(Nginx {
            port,
            dir,
            _process: process,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory of its logs (`error.log`, and the site's access log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `nginx -t` on the site file `site`, made loopback-ready by
/// `make_site(listen port, log dir)`: syntax, and that every directive is
/// allowed where it is.
pub fn check(make_site: impl Fn(u16, &Path) -> anyhow::Result<String>) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("orderflow-nginx-t-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("site.conf"),
        make_site(free_port(), dir.path())?,
    )?;
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, main_config(dir.path()))?;
    test_config(dir.path(), &config)
}

fn test_config(dir: &Path, config: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new(nginx_binary()?)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .output()
        .context("running nginx -t")?;
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(output.status.success(), "nginx -t failed:\n{said}");
    Ok(said)
}
