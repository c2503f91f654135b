#!/usr/bin/env bash
# Installs what blockrep's tests, demo and benchmarks need on a Debian machine, once:
# Debian packages via apt-get (when a command is missing), the npm packages, and the tiny test
# guest that the live-VM tests boot (built from Debian packages, cached in .cache/test-guest;
# skipped with BLOCKREP_SKIP_QEMU_TESTS=1). The S3 tests' real server, a single-node Ceph RGW
# (scripts/s3/start-rgw.sh), needs Ceph's packages (skipped with BLOCKREP_SKIP_S3_TESTS=1).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
# xxhsum is the oracle of the scan tests (and the peer of the scan benchmark).
command -v xxhsum >/dev/null 2>&1 || need+=(xxhash)
if [ "${BLOCKREP_SKIP_QEMU_TESTS:-}" != 1 ]; then
  # Live VMs: QEMU, the guest agent and what the test guest is made of; e2fsprogs makes and
  # checks its ext4 disks.
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
  [ -x /usr/sbin/qemu-ga ] || need+=(qemu-guest-agent)
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
  command -v depmod >/dev/null 2>&1 || need+=(kmod)
  { command -v mkfs.ext4 && command -v e2fsck && command -v debugfs; } >/dev/null 2>&1 || need+=(e2fsprogs)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
fi
if [ "${BLOCKREP_SKIP_S3_TESTS:-}" != 1 ]; then
  # S3: one monitor, one in-memory OSD and radosgw on loopback; curl creates the test bucket.
  command -v radosgw >/dev/null 2>&1 || need+=(radosgw)
  command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
  command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
  { command -v ceph && command -v radosgw-admin; } >/dev/null 2>&1 || need+=(ceph-common)
  command -v monmaptool >/dev/null 2>&1 || need+=(ceph-base)
  command -v curl >/dev/null 2>&1 || need+=(curl)
fi
if [ "${1:-}" = "--bench" ]; then
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
  # The peer of the S3 benchmark.
  command -v restic >/dev/null 2>&1 || need+=(restic)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "blockrep needs these Debian packages: ${need[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

# npm packages: install when missing or when the lock file is newer than the install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build

# The test guest (quick when cached): built here, once, before tests run in parallel.
if [ "${BLOCKREP_SKIP_QEMU_TESTS:-}" != 1 ]; then
  bash scripts/build-test-guest.sh >/dev/null
fi
