#!/usr/bin/env bash
# Builds the peer implementations `make compare` benchmarks ldap-elector against into a
# versioned cache. A second run with the same sources builds nothing and says so.
#
#   hack/build-peers.sh            build (or reuse) and print the bin directory last
#
# Peers: tests/peers/client-go-elector — k8s.io/client-go/tools/leaderelection with a
# LeaseLock, pinned in its go.mod/go.sum to client-go v0.35.4 (the client of Kubernetes
# v1.35.4, the test bed's control plane).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC="$ROOT/tests/peers/client-go-elector"
CACHE_ROOT=${LDAP_ELECTOR_CACHE:-$HOME/.cache/ldap-elector}

step() { printf '[build-peers] %s\n' "$*" >&2; }
fail() { printf '[build-peers] FAILED at step "%s": %s\n' "$1" "$2" >&2; exit 1; }

CLIENT_GO=$(awk '$1 == "k8s.io/client-go" {print $2}' "$SRC/go.mod")
[ -n "$CLIENT_GO" ] || fail "read pins" "no k8s.io/client-go requirement in $SRC/go.mod"
BIN="$CACHE_ROOT/peers-$CLIENT_GO/bin"
OUT="$BIN/client-go-elector"
# The binary is reused only if it was built from exactly these sources.
stamp=$(cd "$SRC" && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
if [ -x "$OUT" ] && [ "$(cat "$OUT.sha256" 2>/dev/null)" = "$stamp" ]; then
  step "cache hit: client-go-elector (client-go $CLIENT_GO) in $BIN, nothing to build"
  echo "$BIN"; exit 0
fi

command -v go >/dev/null 2>&1 || fail "go toolchain" "'go' is not on PATH; install Go >= 1.25 (https://go.dev/doc/install)"
mkdir -p "$BIN"
step "building client-go-elector with client-go $CLIENT_GO -> $BIN (cold: a few minutes on 2 cores)"
start=$(date +%s)
# go.sum is committed: -mod=readonly fails instead of silently changing the pins.
(cd "$SRC" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$OUT.tmp" .) ||
  fail "go build" "see the go output above"
mv "$OUT.tmp" "$OUT"
echo "$stamp" > "$OUT.sha256"
step "built client-go-elector in $(( $(date +%s) - start ))s"
echo "$BIN"
