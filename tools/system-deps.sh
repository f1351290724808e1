#!/usr/bin/env bash
# Install the system programs the tests and benchmarks drive for real:
# Prometheus, Chromium, docker-compose (config validation, and the stack in the deployment test), hey, wrk
# and h2load (nghttp2-client: gRPC and HTTP load from one C client, bench.protocols).
# `tools/system-deps.sh deploy` adds what the deployment test (make test-deploy) needs on top: Debian's
# Docker engine (docker.io) and debootstrap, for the local base image.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v hey >/dev/null || need+=(hey)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ "${1:-}" = deploy ]; then
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
