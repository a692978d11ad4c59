#!/usr/bin/env bash
# Print the base image for docker/Dockerfile: the official Python image when the engine has it
# or can pull it, otherwise a local Debian bookworm image built with debootstrap (for machines
# without access to Docker Hub). The local image carries this host's CA bundle, so that pip
# inside the build trusts the same certificates as pip on the host.
#
# usage: docker/base-image.sh [OFFICIAL_IMAGE]      (needs a running engine; DOCKER_HOST is honoured)
#
# Installing debootstrap needs root and OTRAIN_INSTALL_SYSTEM_PACKAGES=1 (.ci/run sets it);
# otherwise its absence exits with status 3 and says what to run.
set -euo pipefail

official=${1:-python:3.11-slim}
local_image=otrain-base:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${OTRAIN_DOCKER_ROOT:-/var/tmp/otrain-docker}/base

log() { echo "base-image: $*" >&2; }

if docker image inspect "$official" >/dev/null 2>&1 || timeout 120 docker pull --quiet "$official" >/dev/null 2>&1; then
    echo "$official"
    exit 0
fi
if docker image inspect "$local_image" >/dev/null 2>&1; then
    log "$official cannot be pulled; using $local_image"
    echo "$local_image"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || [ "${OTRAIN_INSTALL_SYSTEM_PACKAGES:-0}" != 1 ]; then
        log "$official cannot be pulled and debootstrap is not installed: install it (apt-get install" \
            "debootstrap), or run OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test as root to let otrain install it"
        exit 3
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    log "$official cannot be pulled, and building $local_image with debootstrap needs root" \
        "(sudo OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test)"
    exit 3
fi

log "$official cannot be pulled; building $local_image with debootstrap from $mirror"
mkdir -p "$cache"
rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $cache/debootstrap.log"; exit 1; }
host_bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_bundle" ]; then
    cp "$host_bundle" "$rootfs/usr/local/share/ca-certificates/host-bundle.crt"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$local_image" >/dev/null
log "built $local_image"
echo "$local_image"
