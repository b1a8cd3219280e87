# syntax=docker/dockerfile:1

# operation-runs: the `oprun` service and the example `inventory_worker` executor (the lab,
# `oprun-lab`, is a development tool and is neither built nor shipped here).
#
#   docker build -t operation-runs .
#   docker run --rm -e DATABASE_URL=... -e AMQP_URL=... -p 9187:9187 operation-runs
#   docker run --rm -e AMQP_URL=... --entrypoint inventory_worker operation-runs
#
# Needs BuildKit (the default builder of current Docker and of `docker compose`) for the cache
# mounts, which keep the cargo registry and target directory between builds.

############################ build ############################
FROM rust:1-bookworm AS builder
WORKDIR /build

# The build embeds migrations/ (sqlx::migrate!) and reads Cargo.lock (--locked), so the whole
# context is copied; .dockerignore keeps target/ and .git/ out.
COPY . .

RUN --mount=type=cache,id=oprun-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=oprun-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=oprun-target,target=/build/target \
    cargo build --release --locked -p operation-runs --bin oprun --example inventory_worker \
 && install -D -m 0755 target/release/oprun /out/oprun \
 && install -D -m 0755 target/release/examples/inventory_worker /out/inventory_worker

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: amqps:// and sslmode=require verify against the system roots.
# curl: for the container healthcheck on /readyz (see docker-compose.yml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 oprun \
 && useradd --system --uid 10001 --gid oprun --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin oprun

COPY --from=builder /out/oprun /usr/local/bin/oprun
COPY --from=builder /out/inventory_worker /usr/local/bin/inventory_worker

USER 10001:10001

# /healthz, /readyz and /metrics.
EXPOSE 9187

ENTRYPOINT ["oprun"]
CMD ["serve", "--metrics-addr", "0.0.0.0:9187"]
