#!/usr/bin/env bash
# Builds the pinned control-plane binaries for the test bed from Go modules into a
# versioned cache. A second run with the same pins builds nothing and says so.
#
#   hack/build-testbed.sh            build (or reuse) and print the bin directory last
#
# Pins (why): Kubernetes 1.35 has native sidecars and ValidatingAdmissionPolicy GA and
# builds with the Go toolchain on the build machines; etcd 3.6 is what 1.35 is tested
# with (3.4 lacks watch progress notifications); Helm 3 is what cluster admins run.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
CACHE_ROOT=${LDAP_ELECTOR_CACHE:-$HOME/.cache/ldap-elector}
BIN="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
# kube-scheduler, kubelet and kube-proxy are for the real-node bed (docs/real-node.md).
TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd helm)

step() { printf '[build-testbed] %s\n' "$*" >&2; }
fail() { printf '[build-testbed] FAILED at step "%s": %s\n' "$1" "$2" >&2; exit 1; }

missing=()
for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then
  step "cache hit: all binaries present in $BIN, nothing to build"
  echo "$BIN"; exit 0
fi
step "to build: ${missing[*]} -> $BIN"

command -v go >/dev/null 2>&1 || fail "go toolchain" "'go' is not on PATH; install Go >= 1.25 (https://go.dev/doc/install)"
# GOTOOLCHAIN stays at its default (auto): an older local Go fetches the toolchain Kubernetes
# asks for through the module proxy.
export GOFLAGS=-mod=mod CGO_ENABLED=0
step "module proxy: resolving k8s.io/kubernetes@$K8S_VERSION"
modjson=$(timeout 120 go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>&1) ||
  fail "module proxy" "cannot download k8s.io/kubernetes@$K8S_VERSION (GOPROXY=$(go env GOPROXY)): $modjson"
gomod=$(printf '%s' "$modjson" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' | head -1)
[ -f "$gomod" ] || fail "module proxy" "no go.mod for k8s.io/kubernetes@$K8S_VERSION in the answer"

work="$CACHE_ROOT/work"
mkdir -p "$BIN" "$work"
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
staging_version="v0.${K8S_VERSION#v1.}"

need() { for m in "${missing[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }

k8s_cmds=()
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do need "$t" && k8s_cmds+=("$t"); done
if [ ${#k8s_cmds[@]} -gt 0 ]; then
  # A throwaway module requiring k8s.io/kubernetes; every staging module replaced by its
  # published version, and the go/godebug lines copied so behaviour matches upstream.
  mod="$work/kubernetes-$K8S_VERSION"; mkdir -p "$mod"
  {
    echo "module ldap-elector.dev/testbed/kubernetes"
    grep -E '^(go|godebug) ' "$gomod"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$gomod" |
      awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > "$mod/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } > "$mod/tools.go"
  step "kubernetes $K8S_VERSION: resolving modules ($(grep -c '^replace' "$mod/go.mod") staging replaces)"
  (cd "$mod" && go mod tidy >/dev/null 2>"$work/tidy.log") || fail "kubernetes go mod tidy" "$(tail -5 "$work/tidy.log")"
  ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
  for c in "${k8s_cmds[@]}"; do
    step "kubernetes $K8S_VERSION: building $c (cold: several minutes on 2 cores; go -v lists packages as they compile)"
    start=$(date +%s)
    (cd "$mod" && go build -v -trimpath -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c" 2>&1 |
      awk '{n++; if (n % 50 == 0) printf "[build-testbed]   ... %d packages compiled (%s)\n", n, $0 > "/dev/stderr"}') ||
      fail "build $c" "go build failed"
    [ -x "$BIN/$c.tmp" ] || fail "build $c" "go build produced no binary"
    mv "$BIN/$c.tmp" "$BIN/$c"
    step "built $c in $(( $(date +%s) - start ))s"
  done
fi

if need etcd; then
  # etcd's own go.mod has local replaces, so `go install ...@v` refuses; a wrapper ignores them.
  mod="$work/etcd-$ETCD_VERSION"; mkdir -p "$mod"
  printf 'module ldap-elector.dev/testbed/etcd\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$mod/tools.go"
  step "etcd $ETCD_VERSION: resolving and building"
  (cd "$mod" && go mod tidy >/dev/null 2>"$work/tidy-etcd.log") || fail "etcd go mod tidy" "$(tail -5 "$work/tidy-etcd.log")"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3) || fail "build etcd" "go build failed"
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

if need helm; then
  step "helm $HELM_VERSION: go install"
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ||
    fail "build helm" "go install failed"
  mv "$work/gobin/helm" "$BIN/helm"
fi

for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || fail "verify" "$t missing after build"; done
step "done: $("$BIN/kube-apiserver" --version), etcd $("$BIN/etcd" --version | head -1 | awk '{print $3}'), helm $("$BIN/helm" version --short)"
echo "$BIN"
