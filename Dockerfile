# syntax=docker/dockerfile:1
#
# Herald gateway image.
#   docker build -t herald .
#   docker run -p 6001:6001 -p 9601:9601 herald
# Configure with HERALD_* environment variables (docs/configuration.md).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target directory are BuildKit cache mounts, so the binary
# is copied out of target/ inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -m 0755 target/release/herald /usr/local/bin/herald

FROM debian:bookworm-slim
# curl is only for the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin herald
COPY --from=builder /usr/local/bin/herald /usr/local/bin/herald
USER 10001:10001
ENV HERALD_HOST=0.0.0.0
# 6001: WebSocket (/app/{key}) + REST (/apps/{id}/...) + /up /ready; 9601: /metrics
EXPOSE 6001 9601
# /up is liveness (process serving HTTP); readiness (/ready) is for load balancers.
# The check assumes the default HERALD_PORT=6001.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:6001/up"]
# SIGTERM drains: clients are closed over drain_window (default 5 s), the process
# exits once they are gone, after at most shutdown_grace seconds (default 10).
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
