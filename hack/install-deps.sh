#!/usr/bin/env bash
# Installs the system packages the tests need (Debian). Idempotent and quiet when all is there.
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -eq 0 ]; then
  echo "[install-deps] all system packages present"
  exit 0
fi
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "[install-deps] installing: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
