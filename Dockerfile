# The iniesta image: the host binary, the echo example plugin and a default config, run as a
# non-root user. docs/src/guide/deploying.md explains it; scripts/container.sh tests it.
#
#   docker build -t iniesta .
#   podman build --build-arg ARTIFACTS=build -t iniesta .     (podman before 4.4: see ARTIFACTS)
#   docker run --rm -p 9090:9090 iniesta                      (the default job, embedded broker)
#
# Two stages do the work. `build` compiles the host and the plugins named in PLUGINS with the
# Rust image; `runtime` is the small final image. The runtime stage takes its files from the
# stage named by ARTIFACTS: `build` by default, or any image that holds the same files at the
# same paths (/out/iniesta, /out/plugins/lib*.so), which is how scripts/container.sh builds
# this runtime stage from binaries compiled outside the image.
#
# Needs Docker 23 or later (BuildKit, the default builder) or podman/buildah: the build stage uses
# cache mounts. There is no `# syntax=` line, so the builder's own Dockerfile frontend is used
# and nothing but the two base images is pulled.

# The Rust toolchain to build with. Its Debian release must match RUNTIME_IMAGE's (glibc).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
# The base of the final image: any Debian bookworm image with apt.
ARG RUNTIME_IMAGE=debian:bookworm-slim
# The stage or image the runtime stage copies /out/iniesta and /out/plugins/ from.
# podman/buildah before 4.4 (buildah 1.29) do not resolve an ARG's *default* to a stage name
# (buildah issue 4312): give it explicitly there, `--build-arg ARTIFACTS=build`.
ARG ARTIFACTS=build

# ---- build: the host and the example plugins, release profile ------------------------------
FROM ${RUST_IMAGE} AS build
# Example plugins to ship in /plugins, by directory name under plugins/ (the default config
# binds only echo). A team's own plugins come from its own build: see deploying.md.
ARG PLUGINS="echo"
WORKDIR /src
COPY . .
# The cache mounts keep crates.io downloads and the target directory between builds (BuildKit
# and buildah both honour them); the target directory lives only in the cache, so the files
# the next stage needs are copied out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    packages="-p iniesta"; \
    for p in $PLUGINS; do packages="$packages -p iniesta-plugin-$p"; done; \
    cargo build --release --locked $packages; \
    mkdir -p /out/plugins; \
    cp target/release/iniesta /out/iniesta; \
    for p in $PLUGINS; do cp "target/release/lib$p.so" /out/plugins/; done

# ---- artifacts: whatever ARTIFACTS names (see above) --------------------------------------
FROM ${ARTIFACTS} AS artifacts

# ---- runtime: the final image --------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
LABEL org.opencontainers.image.title="iniesta" \
      org.opencontainers.image.description="SNS/SQS event messaging host with handler plugins" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
# CA certificates for HTTPS to AWS and webhooks (the SDK reads the system's roots). Slim and
# debootstrap minbase images lack them; an image that has them skips apt.
# The user iniesta (uid/gid 10001) runs the host. /plugins and /etc/iniesta belong to root:
# the host refuses plugin files that anyone but root or its own user can change.
RUN set -eux; \
    if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 iniesta; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/iniesta --no-create-home \
        --shell /usr/sbin/nologin iniesta; \
    install -d -o root -g root -m 0755 /plugins /etc/iniesta; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/iniesta
COPY --from=artifacts /out/iniesta /usr/local/bin/iniesta
COPY --from=artifacts /out/plugins/ /plugins/
COPY examples/container.toml /etc/iniesta/iniesta.toml
# Every command (run, publish, check, dlq, plugins) reads this config unless -c says otherwise.
ENV INIESTA_CONFIG=/etc/iniesta/iniesta.toml
USER 10001:10001
WORKDIR /var/lib/iniesta
# /plugins: the handler plugins (mount the team's own over it); /var/lib/iniesta: the local
# broker's SQLite file and other state. /tmp must stay writable too: each plugin is loaded
# from a private copy made under $TMPDIR.
VOLUME ["/plugins", "/var/lib/iniesta"]
# /metrics, /livez, /readyz (and /health) when [metrics] listen is set, as in the default config.
EXPOSE 9090
# One SIGTERM drains (sqs.shutdown_timeout_secs, 30 s by default, plus up to 10 s for queued
# deletes): give the stop at least 60 s (podman/docker stop -t 60, Kubernetes
# terminationGracePeriodSeconds: 60). A second SIGTERM exits at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["iniesta"]
CMD ["run"]
