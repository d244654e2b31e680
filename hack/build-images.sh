#!/usr/bin/env bash
# Builds the real node's container images (pause, ldap-elector, ldap-elector-webhook, OpenLDAP)
# as reproducible OCI archives in ${LDAP_ELECTOR_CACHE:-~/.cache/ldap-elector}/images, without
# Docker or a registry; with CONTAINERD_SOCKET=<socket> (or --containerd <socket>) it also
# imports them into that containerd's k8s.io namespace. docs/images.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
exec cargo run --quiet -p ldap-elector-tests --bin images -- "$@"
