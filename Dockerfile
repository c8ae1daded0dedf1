# syntax=docker/dockerfile:1.7
#
# orderflow's container image: one binary, every role (`serve`, `api`,
# `worker [GROUP…]`, `relay`, `migrate`, …); the role is the command.
#
#   docker build -t orderflow .
#   docker run --rm -p 8080:8080 orderflow serve --demo
#
# Build stage: Rust toolchain plus what the C dependencies need. librdkafka
# is compiled from source by rdkafka-sys (its configure/make build, not
# CMake: the crate's `cmake-build` feature is off) and links OpenSSL (the
# `ssl` feature) and zlib; SQLite is compiled in by libsqlite3-sys.
# BuildKit cache mounts keep the crates.io downloads and the target dir
# between builds, so a code change recompiles only orderflow's own crates.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Versions are not pinned: the Debian release above is, and its security
# updates should be picked up at each build (pinning exact Debian revisions
# breaks the build whenever the archive drops the old revision).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        libssl-dev \
        make \
        perl \
        pkg-config \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The target dir is a cache mount (not in the image), so the binary is
# copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p orderflow \
    && install -D -m 0755 target/release/orderflow /out/orderflow

# Runtime stage: the binary, the shared libraries it links (libssl3;
# zlib1g and glibc are in the base image), CA certificates for TLS to
# Kafka, Redis, SMTP and the webhooks, and curl for the HEALTHCHECK.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Same reason as above: the release is pinned, its security updates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        libssl3 \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid (Kubernetes' runAsUser and fsGroup use it).
RUN groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid orderflow --home-dir /var/lib/orderflow \
        --no-create-home --shell /usr/sbin/nologin orderflow \
    && install -d -o orderflow -g orderflow -m 0750 /var/lib/orderflow
COPY --from=build /out/orderflow /usr/local/bin/orderflow
# The data dir holds the SQLite file (embedded mode) and the JWT signing
# keys; every API process of one deployment must see the same keys (a
# shared volume or a mounted secret, see deploy/README.md).
ENV ORDERFLOW_DATA_DIR=/var/lib/orderflow \
    ORDERFLOW_LISTEN=0.0.0.0:8080 \
    ORDERFLOW_LOG_FORMAT=json
WORKDIR /var/lib/orderflow
VOLUME ["/var/lib/orderflow"]
USER 10001:10001
EXPOSE 8080
# Ready = the database (and Redis/Kafka when configured) answers. For the
# roles with the HTTP API (`serve`, `api`); `worker` and `relay` serve only
# /healthz on ORDERFLOW_METRICS_LISTEN, and deploy/compose.yaml overrides
# this check for them.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "--output", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["orderflow"]
CMD ["serve"]
