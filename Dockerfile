# Container images of the server and the agent, built from this tree:
#
#   docker build --target server -t rtunnel-server .
#   docker build --target agent -t rtunnel-agent .
#
#   docker run -d -p 8080:8080 -v rtunnel-data:/var/lib/rtunnel rtunnel-server
#   docker run -d -e RTUNNEL_URL=wss://... -e RTUNNEL_KEY=... \
#       -e RTUNNEL_SECRET=... rtunnel-agent --static-services ssh=host.lan:22
#
# Both run as a user of their own (uid 10001), never root; the server keeps
# its database, keys and recordings in the volume /var/lib/rtunnel.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# Release binaries (stripped, see [profile.release]); the cache mounts keep
# the registry and the target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rtunnel-server -p rtunnel-agent \
    && install -D -m 0755 target/release/rtunnel-server /out/rtunnel-server \
    && install -D -m 0755 target/release/rtunnel-agent /out/rtunnel-agent

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Roots for wss:// and https://; tini reaps the shells of agent terminals
# and passes SIGTERM and SIGHUP on.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

FROM runtime AS server
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rtunnel \
        --create-home --shell /usr/sbin/nologin rtunnel \
    && chmod 0700 /var/lib/rtunnel
COPY --from=build /out/rtunnel-server /usr/bin/rtunnel-server
USER 10001:10001
VOLUME ["/var/lib/rtunnel"]
ENV RTUNNEL_DATA_DIR=/var/lib/rtunnel \
    RTUNNEL_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Probes: GET /healthz (the process answers), GET /readyz (its database).
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/rtunnel-server"]
CMD ["serve"]

FROM runtime AS agent
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rtunnel-agent \
        --create-home --shell /bin/bash rtunnel-agent \
    && chmod 0700 /var/lib/rtunnel-agent
COPY --from=build /out/rtunnel-agent /usr/bin/rtunnel-agent
USER 10001:10001
# No terminal by default: its shells would run as the agent's own user, and
# a shell of the same user can read what the agent and tini were started
# with (/proc/1/environ: RTUNNEL_SECRET). Mount the secret as a file
# (RTUNNEL_SECRET_FILE) and set RTUNNEL_NO_TERMINAL=false only if a shell
# inside this container is what operators need.
ENV RTUNNEL_STATE_DIR=/var/lib/rtunnel-agent \
    RTUNNEL_NO_TERMINAL=true
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/rtunnel-agent"]
CMD ["run"]
