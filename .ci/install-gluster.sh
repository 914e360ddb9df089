#!/usr/bin/env bash
# Install what tests/distributed needs on Debian 12: GlusterFS (server + FUSE client) and libfaketime
# (a whole GlusterFS client machine with a skewed clock). Idempotent, quiet.
# Needs root (or sudo). Starts nothing: tests/distributed/gluster.py starts glusterd itself
# (there is no systemd here; the packages' postinst "System has not been booted with systemd"
# complaint is harmless).
set -euo pipefail

have_all() {
    PATH="$PATH:/usr/sbin:/sbin"
    command -v glusterd >/dev/null 2>&1 \
        && command -v gluster >/dev/null 2>&1 \
        && command -v glusterfs >/dev/null 2>&1 \
        && dpkg -s libfaketime >/dev/null 2>&1
}

if have_all && [ -z "${SPOOLPIPE_FORCE_INSTALL:-}" ]; then
    echo "install-gluster: GlusterFS already installed ($(PATH="$PATH:/usr/sbin" glusterfs --version | head -n1))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

log="$(mktemp -t install-gluster.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive

echo "install-gluster: apt-get update + install glusterfs-server glusterfs-client libfaketime ..."
if ! {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            glusterfs-server glusterfs-client libfaketime
} >"$log" 2>&1; then
    echo "install-gluster: FAILED; last lines of the apt log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi

if ! have_all; then
    echo "install-gluster: packages installed but glusterd/gluster/glusterfs not found" >&2
    exit 1
fi
[ -e /dev/fuse ] || echo "install-gluster: WARNING: /dev/fuse is missing; FUSE mounts will fail" >&2
echo "install-gluster: OK ($(glusterfs --version | head -n1))"
