#!/usr/bin/env bash
# blockrep's main job on the embedded default (a local repository), end to end:
# make a sample VM disk, back it up, change a little of it, back it up again (only the change
# is stored), restore both versions and prove them bit-exact, verify the repository.
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

echo
echo "demo files are in $work (remove them with: rm -rf $work)"
