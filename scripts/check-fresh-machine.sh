#!/usr/bin/env bash
# Proves the README's quick start on a fresh machine: makes a minimal Debian 12 root
# (debootstrap --variant=minbase bookworm), puts this machine's Node.js 20 into it, clones the
# project's HEAD into it and runs the README's two commands there, `npm run demo` then
# `npm test`, as root. Reports which Debian packages they had to install, how long each took,
# whether each passed, and whether anything the demo started (blockrep serve, QEMU) was left
# running; on stdout and in bench/results/fresh-machine.md.
#
# Usage: check-fresh-machine.sh [--keep] [--only-demo]
#   --keep        keep the Debian root (and its build) when done; its path is printed
#   --only-demo   run `npm run demo` only, not the test suite
# Environment: FRESH_MIRROR  the Debian mirror to use (default: the host's apt source that
#              serves bookworm, from /etc/apt/sources.list or /etc/apt/sources.list.d/)
#              TMPDIR        where the root is made (default /var/tmp; needs about 3 GiB)
#
# Assumptions:
# - Run as root on Debian or Ubuntu (debootstrap is installed when missing), with network access
#   to a Debian mirror and to the npm registry.
# - Node.js is a standalone binary laid out as PREFIX/bin/node, PREFIX/lib/node_modules/npm and
#   PREFIX/include/node: the nodejs.org tarball, nodesource's `nodejs` package, nvm. Those three
#   are copied into the root's /usr/local, nothing else (nodesource's package also pulls in
#   python3 and ca-certificates; here install-deps.sh must find out itself that they are needed).
#   Debian's own `nodejs` package (node linked against libnode, npm elsewhere) is refused.
# - A host that reaches the internet through a TLS-inspecting proxy trusts its CA through
#   /usr/local/share/ca-certificates/*.crt; those certificates are handed to node in the root
#   (NODE_EXTRA_CA_CERTS), as such a network would require of any machine. Nothing else of the
#   host's configuration (npm config, apt config) goes into the root.
# - The commands run in their own mount namespace with the root pivoted to (not chroot), as on a
#   real machine: tests that make user namespaces need that. /proc, /sys, /dev, /dev/pts, a
#   tmpfs /run and a tmpfs /tmp are mounted inside the root and unmounted on every way out.
set -euo pipefail

keep=0
only_demo=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --only-demo) only_demo=1 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-fresh-machine: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "check-fresh-machine: must run as root (it runs debootstrap, mount and chroot)" >&2
  exit 1
fi
project="$(cd "$(dirname "$0")/.." && pwd)"
results="$project/bench/results/fresh-machine.md"
head_commit="$(git -C "$project" rev-parse HEAD)"
if [ -n "$(git -C "$project" status --porcelain --untracked-files=no)" ]; then
  echo "check-fresh-machine: note: uncommitted changes are not checked; the root gets HEAD ($head_commit)" >&2
fi

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }

# --- The mirror: the host's apt source that serves bookworm (deb822 .sources or one-line .list).
host_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) == "bookworm") { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ / bookworm / && enabled != "no") { split(uris, u, " "); print u[1]; found = 1 }
           types = uris = suites = enabled = "" }
      /^[ \t]*$/ { flush(); if (found) exit; next }
      /^#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "uris:" { $1 = ""; uris = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { if (!found) flush() }' "$f"
  done
}
mirror="${FRESH_MIRROR:-$(host_mirror | head -n 1)}"
mirror="${mirror# }"
if [ -z "$mirror" ]; then
  echo "check-fresh-machine: no apt source for bookworm found on this host; give one: FRESH_MIRROR=URL" >&2
  exit 1
fi

# --- Node.js from the host.
node_bin="$(readlink -f "$(command -v node)")"
node_prefix="$(dirname "$(dirname "$node_bin")")"
node_version="$("$node_bin" -v)"
if [ ! -f "$node_prefix/lib/node_modules/npm/bin/npm-cli.js" ] || ldd "$node_bin" | grep -q libnode; then
  echo "check-fresh-machine: node at $node_bin is not a standalone build with npm next to it (see the assumptions in $0)" >&2
  exit 1
fi
case "$node_version" in v20.*) ;; *) echo "check-fresh-machine: note: node is $node_version, the README asks for 20" >&2 ;; esac

if ! command -v debootstrap >/dev/null 2>&1; then
  step "Installing debootstrap on the host"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

work="$(mktemp -d "${TMPDIR:-/var/tmp}/blockrep-fresh-XXXXXX")"
root="$work/root"
logs="$work/logs"
mkdir -p "$root" "$logs"
mounted=()
ns_file="$root/run/blockrep-check.ns"

# Processes started inside the root: they live in the mount namespace the commands ran in.
procs_in_root() { # procs_in_root [PGREP-PATTERN]: pids, one a line
  local ns pid
  ns="$(cat "$ns_file" 2>/dev/null || true)"
  [ -n "$ns" ] || return 0
  for pid in $(pgrep -f "${1:-.}" || true); do
    [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null || true)" = "$ns" ] && echo "$pid"
  done
  return 0
}
cleanup() {
  local rc=$? pid m i
  trap - EXIT INT TERM HUP
  for pid in $(procs_in_root); do kill -KILL "$pid" 2>/dev/null || true; done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m="${mounted[$i]}"
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "check-fresh-machine: could not unmount $m" >&2
  done
  if [ "$keep" = 1 ]; then
    echo "kept the root: $root (logs: $logs)"
  else
    rm -rf --one-file-system "$root"
    echo "logs: $logs"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

step "Debian 12 minbase root from the host's bookworm mirror"
t0=$SECONDS
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1 ||
  { tail -n 30 "$logs/debootstrap.log"; echo "check-fresh-machine: debootstrap failed" >&2; exit 1; }
say "debootstrap: $((SECONDS - t0)) s, $(chroot "$root" dpkg-query -W -f '.\n' | wc -l) packages, Debian $(cat "$root/etc/debian_version")"
cp /etc/resolv.conf "$root/etc/resolv.conf"

step "Node.js $node_version from the host into /usr/local"
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/node_modules" "$root/usr/local/include"
cp "$node_bin" "$root/usr/local/bin/node"
cp -a "$node_prefix/lib/node_modules/npm" "$root/usr/local/lib/node_modules/npm"
[ ! -d "$node_prefix/include/node" ] || cp -a "$node_prefix/include/node" "$root/usr/local/include/node"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
if chroot "$root" ldd /usr/local/bin/node | grep -q 'not found'; then
  chroot "$root" ldd /usr/local/bin/node >&2
  echo "check-fresh-machine: node needs libraries a minimal Debian lacks" >&2
  exit 1
fi
env_extra=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$root/etc/blockrep-check"
  cat /usr/local/share/ca-certificates/*.crt >"$root/etc/blockrep-check/extra-ca.pem"
  env_extra+=(NODE_EXTRA_CA_CERTS=/etc/blockrep-check/extra-ca.pem)
  say "(the host's local CA certificates are handed to node: NODE_EXTRA_CA_CERTS)"
fi
say "node $(chroot "$root" /usr/bin/env -i /usr/local/bin/node -v), npm $(chroot "$root" /usr/bin/env -i /usr/local/bin/node /usr/local/lib/node_modules/npm/bin/npm-cli.js -v)"

step "The project: a clean clone of HEAD ($head_commit)"
git clone -q --no-checkout "$project" "$root/srv/blockrep"
git -C "$root/srv/blockrep" checkout -q --detach "$head_commit"
rm -rf "$root/srv/blockrep/.git"

mount_in_root() { # mount_in_root TARGET MOUNT-ARGS...
  local target="$root$1"
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}
mount_in_root /proc -t proc proc
mount_in_root /sys --bind /sys
mount_in_root /dev --bind /dev
mount_in_root /dev/pts --bind /dev/pts
mount_in_root /run -t tmpfs -o mode=0755 tmpfs
mount_in_root /tmp -t tmpfs -o mode=1777 tmpfs

# run_in_root NAME COMMAND: runs COMMAND in /srv/blockrep as root, in a mount namespace of its
# own whose root is the Debian root (pivot_root), with a clean environment; log in $logs/NAME.log.
run_in_root() {
  local name="$1" cmd="$2"
  unshare --mount --propagation private -- /bin/bash -c '
    set -e
    root="$1"; shift
    readlink /proc/self/ns/mnt >"$root/run/blockrep-check.ns"
    mount --rbind "$root" "$root"
    cd "$root"
    mkdir -p .old-root
    pivot_root . .old-root
    cd /
    umount -l /.old-root
    rmdir /.old-root
    exec /usr/bin/env -i "$@"' bash "$root" \
    HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb \
    ${env_extra[@]+"${env_extra[@]}"} /bin/bash -c "cd /srv/blockrep && $cmd" >"$logs/$name.log" 2>&1
}
packages() { chroot "$root" dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' | sort; }

declare -A status seconds requested pulled leftover
check_command() { # check_command NAME COMMAND
  local name="$1" before after t rc=0
  step "$2"
  before="$(packages)"
  t=$SECONDS
  run_in_root "$name" "$2" || rc=$?
  seconds[$name]=$((SECONDS - t))
  after="$(packages)"
  requested[$name]="$(sed -n 's/^installing \(.*\) \.\.\.$/\1/p' "$logs/$name.log" | tr ' ' '\n' | sort -u | paste -sd' ')"
  pulled[$name]="$(comm -13 <(echo "$before") <(echo "$after") | wc -l)"
  if [ "$rc" = 0 ]; then status[$name]=passed; else status[$name]="FAILED (exit $rc)"; fi
  # What the command started and left behind (by pgrep, only processes of this namespace).
  leftover[$name]="$(for pid in $(procs_in_root 'blockrep.js serve|qemu-system'); do ps -o args= -p "$pid" | cut -c1-60; done | paste -sd';')"
  say "${status[$name]} in ${seconds[$name]} s; Debian packages installed: ${requested[$name]:-none} (${pulled[$name]} with dependencies)"
  say "blockrep serve / QEMU left running: ${leftover[$name]:-none}"
  if [ "$rc" != 0 ]; then say "--- last lines of its output:"; tail -n 40 "$logs/$name.log"; fi
  for pid in $(procs_in_root); do kill -KILL "$pid" 2>/dev/null || true; done
}

load_before="$(cut -d' ' -f1 /proc/loadavg)"
left_before="$(procs_in_root 'blockrep.js serve|qemu-system' | wc -l)"
check_command demo "npm run demo"
[ "$only_demo" = 1 ] || check_command test "npm test"

test_summary=""
if [ -f "$logs/test.log" ]; then
  test_summary="$(sed 's/\x1b\[[0-9;]*m//g' "$logs/test.log" | grep -E '^ *(Test Files|Tests) ' | sed 's/^ *//' | tr -s ' ' | paste -sd';' | sed 's/;/; /g')"
fi

{
  echo "# A fresh machine: the README's quick start on minimal Debian 12"
  echo
  echo "Written by \`scripts/check-fresh-machine.sh\`$([ "$only_demo" = 1 ] && echo ' --only-demo') on $(date -u +%Y-%m-%d) for commit"
  echo "\`$(git -C "$project" rev-parse --short=12 "$head_commit")\`: \`debootstrap --variant=minbase bookworm\` (Debian $(cat "$root/etc/debian_version"),"
  echo "$(chroot "$root" dpkg-query -W -f '.\n' | wc -l | tr -d ' ') packages at the end), Node.js $node_version with its npm and headers copied into"
  echo "/usr/local, a clean clone of the commit, and the README's two commands run there as root,"
  echo "one after the other (the second finds what the first installed). $(nproc) cores, shared"
  echo "with other work: load average $load_before when the demo started, $(cut -d' ' -f1 /proc/loadavg) at the end."
  echo
  echo "| command | result | time | Debian packages install-deps.sh installed (with dependencies) | blockrep serve / QEMU left running |"
  echo "| --- | --- | --- | --- | --- |"
  for name in demo test; do
    [ -n "${status[$name]:-}" ] || continue
    cmd="npm run demo"; [ "$name" = test ] && cmd="npm test"
    echo "| \`$cmd\` | ${status[$name]} | ${seconds[$name]} s | ${requested[$name]:-none} (${pulled[$name]}) | ${leftover[$name]:-none} |"
  done
  echo
  [ -z "$test_summary" ] || { echo "Test suite: $test_summary."; echo; }
  echo "Before the demo no blockrep serve or QEMU ran in the root ($left_before found); after each"
  echo "command the script looks again (pgrep, processes of the root's mount namespace)."
} >"$results"
step "Results (also in bench/results/fresh-machine.md)"
cat "$results"
for name in demo test; do
  case "${status[$name]:-passed}" in passed) ;; *) exit 1 ;; esac
  [ -z "${leftover[$name]:-}" ] || exit 1
done
