# One entry point. `make demo` and `make test` are the two set-up commands of README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test unit e2e lint fmt bed bench system-packages testbed-binaries clean-beds

## demo: a local control plane, the webhook, an annotated StatefulSet, an election and a failover, live
demo: testbed-binaries
	$(CARGO) run --quiet -p ldap-elector-xtask -- demo

## test: everything CI runs after the lint gates: unit tests and e2e tests on the real bed
test: testbed-binaries
	$(CARGO) test --workspace --no-fail-fast

## unit: pure logic only (no control plane)
unit:
	$(CARGO) test -p ldap-elector -p ldap-elector-webhook -p ldap-elector-certs

## e2e: end-to-end tests against the real control plane
e2e: testbed-binaries
	$(CARGO) test -p ldap-elector-tests --no-fail-fast

## lint: the formatting and clippy gates of CI
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bed: a test bed with a pod network whose kubelet runs the chart's webhook and the injected electors; keeps running (Ctrl-C stops it). docs/getting-started.md
## bed NODE=real: a test bed with a real node (containerd, kubelet, kube-proxy, kube-scheduler; root, one per machine). docs/real-node.md
NODE ?= process
bed: testbed-binaries
	@if [ "$(NODE)" = real ]; then \
	  $(CARGO) run --quiet -p ldap-elector-tests --bin real_node_bed; \
	else \
	  $(CARGO) run --quiet -p ldap-elector-tests --bin testbed; \
	fi

## system-packages: install (once, Debian, needs root or sudo) what the tests run: slapd, ldap-utils, Go, a C toolchain
system-packages:
	@bash hack/install-deps.sh

## testbed-binaries: build (or reuse from ~/.cache) etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, helm
testbed-binaries: system-packages
	@bash hack/build-testbed.sh >/dev/null

## clean-beds: remove test-bed directories kept with LDAP_ELECTOR_KEEP_BED=1
clean-beds:
	rm -rf "$${TMPDIR:-/tmp}"/ldap-elector-bed-*

## bench: failover latencies (p50/p99 over BENCH_RUNS=20), API requests/min, RSS — prints a table
bench: testbed-binaries
	$(CARGO) run --quiet -p ldap-elector-xtask -- bench

.PHONY: bench-node

## bench-node: the consumer on the real node (root): slapd kill, pod deletion, elector kill (p50/p99 over BENCH_RUNS=20), sidecar working set — prints a table. docs/real-node.md
bench-node: testbed-binaries
	$(CARGO) run --quiet -p ldap-elector-xtask -- bench-node

.PHONY: peers compare

## peers: build (or reuse from ~/.cache) the client-go leader-election baseline (tests/peers/client-go-elector)
peers:
	@bash hack/build-peers.sh >/dev/null

## compare: ldap-elector vs client-go (defaults and our timings) on the real bed -> results/compare-<date>.{md,svg}
compare: testbed-binaries peers
	$(CARGO) run --quiet -p ldap-elector-xtask -- compare

.PHONY: webhook-bench

## webhook-bench: admission load on the release webhook pinned to one core, cert rotation halfway (WEBHOOK_BENCH_SECS=60) — prints a table
webhook-bench: testbed-binaries
	$(CARGO) run --quiet --release -p ldap-elector-xtask -- webhook-bench

.PHONY: audit-bench

## audit-bench: `ldap-elector audit` (release) on a converged pair preloaded with AUDIT_BENCH_ENTRIES=100000 entries each — wall time and peak RSS
audit-bench:
	$(CARGO) run --quiet -p ldap-elector-xtask -- audit-bench

.PHONY: sbom

## sbom: CycloneDX 1.5 SBOMs of the shipped binaries (normal dependencies for the musl target) -> results/sbom/
sbom:
	$(CARGO) run --quiet -p ldap-elector-xtask -- sbom results/sbom

.PHONY: images

## images: the real node's container images as OCI archives in ~/.cache/ldap-elector/images, no registry; CONTAINERD_SOCKET=<socket> also imports them (docs/images.md)
images: system-packages
	@bash hack/build-images.sh
