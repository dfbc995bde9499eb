# Switchboard images. Stages:
#
#   builder   release build of `switchboard` and `switchboard-load` (`--locked`).
#   tests     the test suite's toolchain image: Rust, the tools scripts/test.sh
#             would otherwise install, and the test binaries prebuilt;
#             docker-compose-test.yaml runs scripts/test.sh in it.
#   runtime   (the default, last stage) the gateway on debian:bookworm-slim,
#             as a non-root user: `docker build -t switchboard .`
#
# Nothing about the network is baked in: the defaults (config/default.toml)
# listen on loopback, so containers set SWITCHBOARD__SERVER__LISTEN=0.0.0.0:8443
# and SWITCHBOARD__SERVER__OPS_LISTEN=0.0.0.0:9090 (docker-compose.yml does).
#
# With BuildKit (the default of `docker build` and `docker compose`), only the
# stages a target needs are built. No `# syntax=` line: the built-in frontend
# does, and needs nothing pulled.

# --- builder -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against placeholder sources, so that a source change
# rebuilds only this crate.
COPY Cargo.toml Cargo.lock build.rs ./
# The patched sqlx-core (see Cargo.toml's [patch.crates-io]) and the
# Swagger UI files of the API reference page (include_str!).
COPY vendor ./vendor
RUN mkdir -p src/devtools/load \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/devtools/load/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# What the crate compiles in: config/default.toml (include_str!),
# migrations/ (sqlx::migrate!), then the sources (the OpenAPI document is
# generated from them). The touch makes the sources newer than the
# placeholder build whatever their copied modification times.
COPY config ./config
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs src/devtools/load/main.rs \
    && cargo build --release --locked \
    && ./target/release/switchboard --version

# --- tests ---------------------------------------------------------------------
# Its own stage (not FROM builder) so that the tool layers stay cached across
# source changes, and the release build is not needed to run the tests.
FROM rust:1-bookworm AS tests
# The tools scripts/test.sh installs when missing, baked in: psql (readiness
# check), redis-server (scripts/test.sh starts a throwaway Redis on a free
# port, and the shared-limit tests start their own), pip for schemathesis,
# docker-compose, chromium, promtool, and python3-venv for kubernetes-validate
# and checkov (their own environment, as scripts/test.sh makes: checkov pins
# old versions of common packages).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-client redis-server python3-pip python3-venv docker-compose chromium prometheus \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip install --no-cache-dir --break-system-packages 'schemathesis>=4,<5'
RUN python3 -m venv /opt/python-tools \
    && /opt/python-tools/bin/pip install --no-cache-dir 'kubernetes-validate>=1.37,<1.38' 'checkov>=3.2,<4'
ENV PATH="$PATH:/opt/python-tools/bin"
WORKDIR /src
# Dependencies (with dev-dependencies, debug profile) against placeholders.
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
RUN mkdir -p src/devtools/load tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/devtools/load/main.rs \
    && touch src/lib.rs tests/it/main.rs \
    && cargo test --all-targets --locked --no-run \
    && rm -rf src tests
# The whole repository (less .dockerignore): the tests read the compose files,
# .env files, ops/, docs/ and this Dockerfile too.
COPY . .
RUN touch src/main.rs src/lib.rs src/devtools/load/main.rs tests/it/main.rs \
    && cargo test --all-targets --locked --no-run
# Everything is installed: a missing tool is a broken image, not a reason to
# reach for a package registry at test time.
ENV SWITCHBOARD_NO_INSTALL=1
CMD ["scripts/test.sh"]

# --- runtime -------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates for https:// switches on the public PKI; curl for HEALTHCHECK.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --home-dir /app \
        --no-create-home --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=builder /src/target/release/switchboard /src/target/release/switchboard-load /usr/local/bin/
# Read from disk over the compiled-in copy; relative config paths (certs/...)
# resolve against /app.
COPY config ./config
# Writable by the service user: certs/ (`switchboard certs`, `demo`) and
# sim-state/ (`switchboard sim --state`). A named volume mounted on either
# starts with this ownership.
RUN mkdir -p certs sim-state \
    && chown switchboard:switchboard certs sim-state
USER 10001:10001
# HTTPS API, ops listener (metrics, health; plain HTTP).
EXPOSE 8443 9090
# The ops listener's liveness endpoint; assumes ops on port 9090. Containers
# running something else from this image (sim, certs) override or disable it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["switchboard"]
CMD ["serve"]
