#!/usr/bin/env bash
# Make the local base image that the deployment test builds every image from, where no registry can be
# pulled from: Debian bookworm (minbase) with python3, python3-venv and ca-certificates, from Debian's own
# packages by debootstrap, imported into the running Docker engine. Needs root, debootstrap and an engine.
#
#   tools/local-base-image.sh            # prints the image reference (digits-local-base:bookworm)
#
# An image made earlier is reused when its recipe label matches: the hash of this script and of the host's
# CA bundle. The host bundle is copied in, so pip and apt inside builds trust what the host trusts (a
# network whose TLS is re-signed by a local authority needs exactly that). The image carries the label
# org.digits-serving.role=local-base, which is how the test (and a person cleaning up) finds it.
set -euo pipefail

IMAGE=${LOCAL_BASE_IMAGE:-digits-local-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
ROLE_LABEL=org.digits-serving.role=local-base

recipe=$(cat "$0" "$CA_BUNDLE" | sha256sum | cut -c1-16)
existing=$(docker image ls -q --filter "reference=$IMAGE" --filter "label=$ROLE_LABEL" \
    --filter "label=org.digits-serving.recipe=$recipe")
if [ -n "$existing" ]; then
    echo "$IMAGE"
    exit 0
fi

for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || {
        echo "local-base-image.sh: $tool is not installed (apt-get install debootstrap docker.io)" >&2
        exit 1
    }
done
[ "$(id -u)" -eq 0 ] || {
    echo "local-base-image.sh: debootstrap needs root" >&2
    exit 1
}

root=$(mktemp -d /var/tmp/digits-local-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "local-base-image.sh: debootstrap $SUITE into $root" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"
# The bundle goes in twice: as the bundle itself, and as a local authority, so that an
# update-ca-certificates run by a later package install regenerates a bundle that still holds it.
install -m 0644 "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$CA_BUNDLE" "$root/usr/local/share/ca-certificates/host-bundle.crt"
# Builds from this image run apt-get update themselves; downloaded packages and lists only add size.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# An image from an older recipe loses its tag to the new one; it is removed after the import.
stale=$(docker image ls -q --filter "reference=$IMAGE" --filter "label=$ROLE_LABEL")
tar --numeric-owner -C "$root" -c . | docker import \
    --change "LABEL $ROLE_LABEL org.digits-serving.recipe=$recipe" \
    --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
[ -z "$stale" ] || docker image rm "$stale" >/dev/null 2>&1 || true
echo "$IMAGE"
