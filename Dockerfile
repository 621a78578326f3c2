# syntax=docker/dockerfile:1
# driftd: multi-stage build. The builder compiles the bundled librdkafka
# (needs a C toolchain, make, perl, and OpenSSL for Kafka TLS/SASL); the
# runtime image has only the binary, OpenSSL, CA certificates and a non-root user.

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential perl pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild librdkafka.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benchmarks \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in decode window compare replay metrics kafka_throughput; do echo 'fn main() {}' > benchmarks/$b.rs; done \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked && strip target/release/driftd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin driftd \
    && mkdir -p /etc/driftd /var/lib/driftd/baselines /var/lib/driftd/state \
    && chown -R 10001:10001 /var/lib/driftd
COPY --from=build /src/target/release/driftd /usr/local/bin/driftd
COPY config/driftd.toml /etc/driftd/driftd.toml
# Config and baselines come from mounted volumes (a ConfigMap and a
# volume in Kubernetes); checkpoints need a writable volume at state/.
VOLUME ["/var/lib/driftd/baselines", "/var/lib/driftd/state"]
ENV DRIFTD__BASELINES__DIR=/var/lib/driftd/baselines \
    DRIFTD__CHECKPOINT__DIR=/var/lib/driftd/state \
    DRIFTD__HTTP__LISTEN=0.0.0.0:9400 \
    DRIFTD__LOG__FORMAT=json
USER 10001:10001
EXPOSE 9400
# The runtime image has no curl: driftd answers its own probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["driftd", "probe", "http://127.0.0.1:9400/livez"]
ENTRYPOINT ["driftd"]
CMD ["run", "--config", "/etc/driftd/driftd.toml"]
