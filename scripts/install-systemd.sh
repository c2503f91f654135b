#!/usr/bin/env bash
# Installs blockrep's nightly job under systemd (docs/guide/nightly-jobs.md):
#   /etc/systemd/system/blockrep-run.service and blockrep-run.timer (from scripts/systemd/),
#   /etc/blockrep/ (mode 0700) with blockrep.yaml from the example when there is none yet,
# then reloads systemd and enables the timer. Run as root. Usage:
#   scripts/install-systemd.sh [--bin PATH] [--root DIR] [--no-enable]
#     --bin PATH   the blockrep command (default: blockrep on the PATH, else this checkout's
#                  bin/blockrep.js run by node)
#     --root DIR   install under DIR instead of / (packaging, tests); nothing is enabled
#     --no-enable  install the files only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="" root="" enable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
    --root) root="${2:?--root needs a folder}"; enable=0; shift 2 ;;
    --no-enable) enable=0; shift ;;
    *) echo "install-systemd: unknown option $1 (see the head of this script)" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  bin="$(command -v blockrep || true)"
  [ -n "$bin" ] || bin="$(cd "$here/.." && pwd)/bin/blockrep.js"
fi
[ -e "$bin" ] || { echo "install-systemd: $bin does not exist; give blockrep's path with --bin" >&2; exit 2; }
bin="$(realpath "$bin")"
exec_start="$bin"
if [[ "$bin" == *.js ]]; then
  node="$(command -v node || true)"
  [ -n "$node" ] || { echo "install-systemd: node is not on the PATH" >&2; exit 2; }
  exec_start="$(realpath "$node") $bin"
fi

units="$root/etc/systemd/system"
etc="$root/etc/blockrep"
install -d -m 0755 "$units"
install -d -m 0700 "$etc"
sed "s|@BLOCKREP@|$exec_start|" "$here/systemd/blockrep-run.service" >"$units/blockrep-run.service.tmp"
chmod 0644 "$units/blockrep-run.service.tmp"
mv "$units/blockrep-run.service.tmp" "$units/blockrep-run.service"
install -m 0644 "$here/systemd/blockrep-run.timer" "$units/blockrep-run.timer"
if [ ! -e "$etc/blockrep.yaml" ]; then
  install -m 0600 "$here/systemd/blockrep.yaml.example" "$etc/blockrep.yaml"
  echo "install-systemd: wrote $etc/blockrep.yaml from the example: edit it, then check it with"
  echo "  $exec_start run --config /etc/blockrep/blockrep.yaml --dry-run"
fi
echo "install-systemd: installed $units/blockrep-run.service (ExecStart=$exec_start run …) and blockrep-run.timer"
if [ "$enable" = 1 ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now blockrep-run.timer
    systemctl list-timers blockrep-run.timer --no-pager || true
  else
    echo "install-systemd: systemd is not running here; enable later with: systemctl enable --now blockrep-run.timer"
  fi
fi
