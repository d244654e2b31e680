# syntax=docker/dockerfile:1
# One image per shipped binary, chosen with BIN; build from the repository root:
#   docker build --build-arg BIN=ldap-elector -t ldap-elector:$VERSION .
#   docker build --build-arg BIN=ldap-elector-webhook -t ldap-elector-webhook:$VERSION .
# (the package and its binary have the same name). A static musl binary on scratch: no
# shell, no package manager, non-root (SYS.1.6.A16/A17). The binary is the image's only
# file, at /entrypoint: an exec-form ENTRYPOINT cannot name a build argument.
# Reproducible: pinned toolchain (rust-toolchain.toml), --locked, SOURCE_DATE_EPOCH, no timestamps.
ARG RUST_VERSION=1.95.0
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG BIN
RUN test -n "${BIN}" || { echo "set --build-arg BIN=ldap-elector or BIN=ldap-elector-webhook" >&2; exit 1; }
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG SOURCE_DATE_EPOCH=0
ENV CARGO_INCREMENTAL=0 RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
RUN rustup target add x86_64-unknown-linux-musl \
 && cargo build --release --locked --target x86_64-unknown-linux-musl -p "${BIN}" --bin "${BIN}" \
 && cp "target/x86_64-unknown-linux-musl/release/${BIN}" /entrypoint

FROM scratch
ARG BIN
ARG DESCRIPTION="ldap-elector: Lease-based leader election for OpenLDAP Mirror Mode on Kubernetes"
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="${BIN}" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /entrypoint /entrypoint
USER 65532:65532
ENTRYPOINT ["/entrypoint"]
