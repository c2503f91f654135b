#!/usr/bin/env bash
# blockrep's main job on the embedded default (a local repository), end to end:
# make a sample VM disk, back it up, change a little of it, back it up again (only the change
# is stored), restore both versions and prove them bit-exact, verify the repository.
# Then the real thing, as a nightly job runs it: a repository server on loopback with a token,
# a tiny Linux guest (built from Debian packages) with two disks, writing all the time, and a
# job config naming it and the sample image; `blockrep run` three nights in a row (live path:
# freeze, snapshot, thaw, send, commit back; retention after each), gc, a sampled scrub, and
# every version restored from the server and shown to be a clean filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >&2

work="${BLOCKREP_DEMO_DIR:-$(mktemp -d -t blockrep-demo-XXXXXX)}"
mkdir -p "$work"
blockrep() { node bin/blockrep.js "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

img="$work/vm-disk.qcow2"
repo="$work/repo"
rm -rf "$repo" "$img" "$work"/*.raw

step "A 1 GiB qcow2 disk with 192 MiB of data (random and patterned) and holes"
truncate -s 1G "$work/base.raw"
dd if=/dev/urandom of="$work/base.raw" bs=1M count=64 seek=512 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$work/base.raw" "$img"
rm -f "$work/base.raw"
qemu-io -f qcow2 "$img" -c "write -P 0x41 0 64M" -c "write -P 0x37 900M 64M" >/dev/null
qemu-img info "$img" | grep -E 'virtual size|disk size'

step "First backup: everything is new"
blockrep backup "$img" --repo "$repo"
qemu-img convert -O raw "$img" "$work/state1.raw"

step "The guest changes 40 KiB in 5 places and writes a 4 MiB file"
for off in 1M 70M 300M 555M 901M; do qemu-io -f qcow2 "$img" -c "write -P 0x99 $off 8k" >/dev/null; done
qemu-io -f qcow2 "$img" -c "write -P 0x12 700M 4M" >/dev/null

step "Second backup: only the changed blocks are stored"
blockrep backup "$img" --repo "$repo"

step "The repository"
blockrep list --repo "$repo"
du -sh "$repo"

step "Restore both versions and compare them with the disk as it was"
first=$(blockrep list --repo "$repo" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).disks[0].versions[0].version))')
blockrep restore --repo "$repo" --disk vm-disk --version "$first" --to "$work/restored1.raw"
blockrep restore --repo "$repo" --disk vm-disk --to "$work/restored2.qcow2" --format qcow2
qemu-img compare -f raw -F raw "$work/state1.raw" "$work/restored1.raw"
qemu-img compare -f qcow2 -F qcow2 "$img" "$work/restored2.qcow2"

step "Verify every chunk of every version"
blockrep verify --repo "$repo"

step "A running VM: the tiny test guest under QEMU (TCG), two ext4 disks, writing all the time"
vm="$work/vm"
rm -rf "$vm" "$work/server" "$work/tokens.json" "$work/token" "$work/blockrep.yaml"
# What the demo starts in the background — the guest's QEMU (it daemonizes and writes its pid
# to $vm/qemu.pid) and blockrep serve — is stopped whenever the demo ends: success, failure,
# Ctrl-C or kill. A signal ends the demo through the EXIT trap.
server_pid=""
stop_pid() { # stop_pid PID: TERM, up to 5 s to exit, then KILL
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  trap - INT TERM HUP
  [ -z "$server_pid" ] || stop_pid "$server_pid"
  local qemu_pid
  qemu_pid="$(cat "$vm/qemu.pid" 2>/dev/null || true)"
  [ -z "$qemu_pid" ] || stop_pid "$qemu_pid"
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
bash scripts/guest/start-guest.sh "$vm" demovm >/dev/null
echo "disk1: $(qemu-img info -U "$vm/a/disk1.qcow2" | grep -E '^(file format|backing file):' | paste -sd' ')  (attached with -drive)"
echo "vd2:   $vm/b/disk2.raw, raw (attached with -blockdev)"

step "The offsite side: blockrep serve on loopback, and a token for the nightly job"
blockrep token create --tokens "$work/tokens.json" --name nightly --disks '*' --rights read,write,admin | tail -n 1 >"$work/token"
chmod 600 "$work/token"
# node itself in the background (not the blockrep function, whose $! would be a subshell that
# leaves node running when killed).
node bin/blockrep.js serve --root "$work/server" --listen 127.0.0.1:0 --tokens "$work/tokens.json" >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on \(http[^ ]*\).*/\1/p' "$work/serve.out" | head -n 1)
[ -n "$url" ] || { echo "blockrep serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "server: $url (its log: $work/serve.log)"

step "The job configuration"
cat >"$work/blockrep.yaml" <<YAML
repository:
  url: $url
  tokenFile: token            # relative paths are relative to this file
defaults:
  retention: {keepLast: 2}    # applied after each VM's backup
vms:
  - name: demovm              # a running VM: its disks are demovm/disk1 and demovm/vd2
    qmp: vm/qmp.sock
    qga: vm/qga.sock
  - name: sample              # a shut-down VM's image file
    images:
      - path: vm-disk.qcow2
        disk: disk
YAML
cat "$work/blockrep.yaml"
blockrep run --config "$work/blockrep.yaml" --dry-run

for night in 1 2 3; do
  step "Night $night: blockrep run (the guest keeps writing in between)"
  [ "$night" = 1 ] || sleep 3
  blockrep run --config "$work/blockrep.yaml"
done
echo "the VM runs on its own images again, and nothing of blockrep's is left next to them:"
ls "$vm/a" "$vm/b"

step "Garbage collection (chunks only pruned versions used) and a sampled scrub"
blockrep gc --repo "$url" --token-file "$work/token" --grace 0
blockrep verify --repo "$url" --token-file "$work/token" --sample 50

step "Restore every version of the live disks from the server; each must be a clean filesystem with a gap-free record log"
blockrep list --repo "$url" --token-file "$work/token"
for disk in demovm/disk1 demovm/vd2; do
  for version in $(blockrep list --repo "$url" --token-file "$work/token" --disk "$disk" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const v of JSON.parse(s).disks[0].versions)console.log(v.version)})'); do
    out="$work/restored.raw"
    blockrep restore --repo "$url" --token-file "$work/token" --disk "$disk" --version "$version" --to "$out" --force >/dev/null
    e2fsck -fn "$out" >/dev/null 2>&1 || { echo "$disk $version: e2fsck found problems" >&2; e2fsck -fn "$out" >&2; exit 1; }
    records=$(debugfs -R "cat /log" "$out" 2>/dev/null | awk '{ if ($1 != "rec" || $2 != NR) { print "gap at line " NR > "/dev/stderr"; exit 1 } } END { print NR }')
    echo "$disk $version: e2fsck clean; records 1..$records, no gap"
    rm -f "$out"
  done
done
blockrep restore --repo "$url" --token-file "$work/token" --disk sample/disk --to "$work/sample.qcow2" --format qcow2 --force >/dev/null
qemu-img compare -f qcow2 -F qcow2 "$img" "$work/sample.qcow2"

echo
echo "demo files are in $work (remove them with: rm -rf $work)"
