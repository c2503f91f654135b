#!/usr/bin/env bash
# Installs what blockrep's tests, demo and benchmarks need on a Debian machine, once:
# Debian packages via apt-get (when a command is missing), the npm packages, and the tiny test
# guest that the live-VM tests boot (built from Debian packages, cached in .cache/test-guest;
# skipped with BLOCKREP_SKIP_QEMU_TESTS=1). The database servers of the hook tests are skipped
# with BLOCKREP_SKIP_DB_TESTS=1. The S3 tests' real server, a single-node Ceph RGW
# (scripts/s3/start-rgw.sh), needs Ceph's packages (skipped with BLOCKREP_SKIP_S3_TESTS=1).
# Usage: install-deps.sh [--test|--bench]   (--test: also what the test suite calls; --bench:
# also what the benchmarks call). Works on a minimal Debian (debootstrap --variant=minbase) with
# Node.js 20; scripts/check-fresh-machine.sh proves it.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"

# npm packages: installed when missing or when the lock file is newer than the install.
npm_install=0
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm_install=1
fi

need=()
if [ "$npm_install" = 1 ]; then
  # npm ci compiles zstd-napi (when no prebuilt binary can be fetched) and the native seek
  # addon with node-gyp, which runs python3, make and a C++ compiler.
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v g++ >/dev/null 2>&1 || need+=(g++)
fi
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
# qemu-nbd serves images to the NBD client's tests; nbdinfo (libnbd) is the oracle of what NBD
# exports show (maps, dirty bitmaps, allocation), there and in the hypervisor tests.
command -v qemu-nbd >/dev/null 2>&1 || need+=(qemu-utils)
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
if [ "${BLOCKREP_SKIP_QEMU_TESTS:-}" != 1 ]; then
  # Live VMs: QEMU, the guest agent and what the test guest is made of; e2fsprogs makes and
  # checks its ext4 disks.
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
  [ -x /usr/sbin/qemu-ga ] || need+=(qemu-guest-agent)
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
  command -v depmod >/dev/null 2>&1 || need+=(kmod)
  { command -v mkfs.ext4 && command -v e2fsck && command -v debugfs; } >/dev/null 2>&1 || need+=(e2fsprogs)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  # libvirt domains (backup --domain): the tests start libvirtd and virtlogd themselves.
  command -v virsh >/dev/null 2>&1 || need+=(libvirt-clients)
  { [ -x /usr/sbin/libvirtd ] && [ -x /usr/sbin/virtlogd ]; } || need+=(libvirt-daemon-system)
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
if [ "${BLOCKREP_SKIP_DB_TESTS:-}" != 1 ]; then
  # The guest fsfreeze hooks' tests (test/hooks) start real MariaDB 10.11 and PostgreSQL 15
  # servers, as the Debian packages ship them.
  { command -v mariadbd && command -v mariadb-install-db && command -v mariadb; } >/dev/null 2>&1 || need+=(mariadb-server mariadb-client)
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
fi
if [ "$mode" = --test ]; then
  # The scan tests check hashes against xxhsum; the TLS tests make a certificate with openssl;
  # the durability tests watch a backup's system calls with strace.
  command -v xxhsum >/dev/null 2>&1 || need+=(xxhash)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v strace >/dev/null 2>&1 || need+=(strace)
fi
if [ "$mode" = --bench ]; then
  command -v xxhsum >/dev/null 2>&1 || need+=(xxhash)
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
  # The peer of the S3 benchmark.
  command -v restic >/dev/null 2>&1 || need+=(restic)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "blockrep needs these Debian packages: ${need[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "installing ${need[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$npm_install" = 1 ]; then
  # node-gyp compiles against Node's headers. Those that came with node (nodesource's package
  # and the nodejs.org tarball put them in PREFIX/include/node) are used when they match its
  # version, so that no download from nodejs.org is needed.
  prefix="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
  if [ -z "${npm_config_nodedir:-}" ] && [ -f "$prefix/include/node/node_version.h" ] &&
    [ "v$(sed -n 's/^#define NODE_\(MAJOR\|MINOR\|PATCH\)_VERSION \([0-9]*\)$/\2/p' "$prefix/include/node/node_version.h" | paste -sd.)" = "$(node -v)" ]; then
    export npm_config_nodedir="$prefix"
  fi
  npm ci --no-audit --no-fund
fi
npm run --silent build

# The test guest (quick when cached): built here, once, before tests run in parallel.
if [ "${BLOCKREP_SKIP_QEMU_TESTS:-}" != 1 ]; then
  bash scripts/build-test-guest.sh >/dev/null
fi
