#!/usr/bin/env bash
# Installs the system packages the tests need (Debian). Idempotent and quiet when all is there.
# slapd and ldap-utils are for the Mirror-Mode e2e tests, which run their own slapd instances
# on loopback: the system instance the package sets up is stopped and disabled.
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc libc6-dev)
{ command -v slapd >/dev/null || [ -x /usr/sbin/slapd ]; } || need+=(slapd)
command -v ldapsearch >/dev/null || need+=(ldap-utils)
# The real node (docs/real-node.md): containerd + runc, CNI plugins, kube-proxy's iptables,
# nft (its nftables mode) and conntrack, and busybox-static (a static httpd the real-node e2e
# mounts into a container).
# The bed starts its own containerd; the package's system service is kept from running.
real_node=()
command -v containerd >/dev/null || real_node+=(containerd)
command -v runc >/dev/null || real_node+=(runc)
[ -x /usr/lib/cni/bridge ] || real_node+=(containernetworking-plugins)
command -v iptables >/dev/null || real_node+=(iptables)
command -v conntrack >/dev/null || real_node+=(conntrack)
command -v nft >/dev/null || real_node+=(nftables)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || real_node+=(busybox-static)
need+=("${real_node[@]}")
# Container images without a registry (docs/images.md): musl-gcc for the static binaries and
# the pause process, mmdebstrap for the OpenLDAP image's Debian rootfs.
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if [ ${#need[@]} -eq 0 ]; then
  echo "[install-deps] all system packages present"
  exit 0
fi
echo "[install-deps] installing: ${need[*]}"
$SUDO apt-get update -qq
if printf '%s\n' "${need[@]}" | grep -qx slapd; then
  # No questions; the package's own database is never used (tests configure their own).
  echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
fi
if [ ${#real_node[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  # No system containerd: forbid service starts during this install (invoke-rc.d honours it).
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
if printf '%s\n' "${need[@]}" | grep -qx slapd; then
  # Stop and disable the system instance if the package started one.
  $SUDO service slapd stop >/dev/null 2>&1 || true
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now slapd >/dev/null 2>&1 || true
  else
    $SUDO update-rc.d slapd disable >/dev/null 2>&1 || true
  fi
fi
if [ ${#real_node[@]} -gt 0 ]; then
  # Should a system containerd run anyway, stop and disable it: the bed runs its own.
  $SUDO service containerd stop >/dev/null 2>&1 || true
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now containerd >/dev/null 2>&1 || true
  else
    $SUDO update-rc.d containerd disable >/dev/null 2>&1 || true
  fi
fi
