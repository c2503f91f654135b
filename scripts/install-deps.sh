#!/usr/bin/env bash
# Installs what blockrep's tests, demo and benchmarks need on a Debian machine, once:
# Debian packages via apt-get (when a command is missing) and the npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
if [ "${1:-}" = "--bench" ]; then
  command -v xxhsum >/dev/null 2>&1 || need+=(xxhash)
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
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
