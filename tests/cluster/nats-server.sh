#!/usr/bin/env bash
# Installs Debian's nats-server when it is missing (the cluster tests start it on loopback).
set -euo pipefail
if command -v nats-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "nats-server is missing and this is not root: apt-get install nats-server" >&2
  exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server
# The package enables a system service; the tests start their own servers on free ports.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now nats-server >/dev/null 2>&1 || true
fi
