#!/usr/bin/env bash
# Install the system programs the tests and benchmarks drive for real:
# Prometheus, Chromium, docker-compose (config validation, and the stack in the deployment test), hey, wrk
# and h2load (nghttp2-client: gRPC and HTTP load from one C client, bench.protocols).
# `tools/system-deps.sh deploy` adds what the deployment test (make test-deploy) needs on top: Debian's
# Docker engine (docker.io) and debootstrap, for the local base image.
# `tools/system-deps.sh build` installs only what building the package needs: a C compiler and
# libnghttp2's header for the C extensions (service/grpc/_h2.c, _wire.c, service/http/_leaves.c,
# service/core/_finite.c; Python's headers come with CPython).
set -euo pipefail
need=()
if [ "${1:-}" = build ]; then
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    [ -f /usr/include/nghttp2/nghttp2.h ] || need+=(libnghttp2-dev)
    what="build packages" missing="building the package needs"
else
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
    what="system packages" missing="missing system packages"
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "$missing: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing $what: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
