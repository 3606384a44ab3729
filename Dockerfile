# syntax=docker/dockerfile:1
#
# Kiln in a container: build the release binary, then run it as a non-root user
# on Debian bookworm-slim with git.
#
#   docker build -t kiln .
#   docker run -d --name kiln -p 7420:7420 -v kiln-data:/data --stop-timeout 30 kiln
#
# docs/operations.md ("Running in Docker") explains the volume, the admin token and
# what was checked by hand.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The crate registry and target/ live in BuildKit cache mounts, so a rebuild after a
# source change compiles only kiln itself. A "dummy main.rs" dependency layer would
# not work here: Cargo.toml declares [[bench]] targets, and cargo refuses a manifest
# whose bench files are missing. The binary is copied out of the cache mount because
# the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kiln \
 && install -m 0755 target/release/kiln /usr/local/bin/kiln

# sandbox-agent, pinned, for ACP sessions (docs/sessions.md). The npm package ships
# one statically linked binary; only that binary goes into the image.
FROM node:22-bookworm-slim AS sandbox-agent
RUN npm install --prefix /opt/sa --no-audit --no-fund @sandbox-agent/cli-linux-x64@0.4.2 \
 && install -m 0755 /opt/sa/node_modules/@sandbox-agent/cli-linux-x64/bin/sandbox-agent /usr/local/bin/sandbox-agent \
 && /usr/local/bin/sandbox-agent --version

FROM debian:bookworm-slim
# git:             every repository operation runs the git binary.
# ca-certificates: https clones (git's Recommends, dropped by --no-install-recommends).
# openssh-client:  ssh:// and user@host:path sources (also a dropped Recommends of git).
# curl:            the HEALTHCHECK below; the slim image has no HTTP client of its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git openssh-client \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so a bind-mounted data dir can be chowned to it ahead of time.
RUN groupadd --gid 10001 kiln \
 && useradd --uid 10001 --gid kiln --no-log-init --create-home --home-dir /home/kiln \
      --shell /usr/sbin/nologin kiln \
 && install -d -o 10001 -g 10001 -m 0700 /data

COPY --from=builder /usr/local/bin/kiln /usr/local/bin/kiln
COPY --from=sandbox-agent /usr/local/bin/sandbox-agent /usr/local/bin/sandbox-agent

ENV KILN_DATA_DIR=/data \
    KILN_SERVER__BIND=0.0.0.0:7420
VOLUME /data
EXPOSE 7420
# Numeric, so orchestrators that require a non-root user can verify it.
USER 10001:10001
WORKDIR /home/kiln

# /v1/health needs no token and answers only once migrations have run.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:7420/v1/health || exit 1

ENTRYPOINT ["kiln"]
CMD ["serve"]
