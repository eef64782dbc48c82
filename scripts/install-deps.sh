#!/usr/bin/env bash
# Installs the host packages the build and tests need, from Debian's archive.
# Idempotent and quick when everything is already there.
set -euo pipefail

need=()
dpkg -s libxen-dev >/dev/null 2>&1 || need+=(libxen-dev)   # Xen's C headers, for differential tests
command -v cc >/dev/null 2>&1 || need+=(gcc)
# qemu-img/qemu-io: rblkback's qcow2 code is checked against QEMU's. The
# test host's build installs qemu-system-x86 of the same version later.
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# rxen-tap's tests read a TAP's offload features back with ethtool -k.
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: need root to install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
