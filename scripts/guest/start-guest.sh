#!/usr/bin/env bash
# Boots blockrep's test guest (scripts/build-test-guest.sh) under TCG with two ext4 data disks
# and waits until its writer runs. Usage: start-guest.sh DIR [NAME]
#   DIR/a/disk1.qcow2  qcow2 over the backing file DIR/a/base1.qcow2, attached with -drive (id disk1)
#   DIR/b/disk2.raw    raw, attached with -blockdev (node disk2, device vd2)
#   DIR/qmp.sock       QMP;  DIR/qga.sock  the guest agent;  DIR/silent.sock  a port the guest
#                      holds open but never answers;  DIR/dead.sock  a port nobody opens
#   DIR/serial.log     the console (the writer prints "blockrep-writer N" there)
#   DIR/qemu.pid       QEMU's pid (stop it with: kill "$(cat DIR/qemu.pid)")
# Disks are made only when missing, so a second boot reuses them. Environment:
#   GUEST_AGENT=off    boot without the guest agent
#   GUEST_WRITER=off   boot without the writer
#   GUEST_SMP          number of vCPUs (default 1);  GUEST_QEMU_ARGS  more QEMU arguments
#   GUEST_DISK_SIZE    size of each data disk (default 64M)
# QEMU runs without CAP_DAC_OVERRIDE, as an unprivileged QEMU would: it cannot write into
# folders that are not writable by their owner.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(realpath -m "${1:?usage: start-guest.sh DIR [NAME]}")"
name="${2:-testvm}"
size="${GUEST_DISK_SIZE:-64M}"
guest="$(bash "$here/../build-test-guest.sh")"

mkdir -p "$dir/a" "$dir/b"
make_fs() { # make_fs IMAGE LABEL ID
  local tree
  tree="$(mktemp -d)"
  echo "$3" >"$tree/id"
  mkdir "$tree/files"
  truncate -s "$size" "$1"
  mkfs.ext4 -q -F -L "$2" -d "$tree" "$1"
  rm -rf "$tree"
}
if [ ! -f "$dir/a/disk1.qcow2" ]; then
  make_fs "$dir/a/base1.raw" data1 disk1
  qemu-img convert -q -f raw -O qcow2 "$dir/a/base1.raw" "$dir/a/base1.qcow2"
  rm -f "$dir/a/base1.raw"
  (cd "$dir/a" && qemu-img create -q -f qcow2 -b base1.qcow2 -F qcow2 disk1.qcow2)
fi
[ -f "$dir/b/disk2.raw" ] || make_fs "$dir/b/disk2.raw" data2 disk2

append="console=ttyS0 panic=-1 quiet loglevel=1 ${GUEST_APPEND:-}"
[ "${GUEST_AGENT:-on}" = off ] && append="$append blockrep.agent=off"
[ "${GUEST_WRITER:-on}" = off ] && append="$append blockrep.writer=off"
rm -f "$dir/qmp.sock" "$dir/qga.sock" "$dir/silent.sock" "$dir/dead.sock" "$dir/qemu.pid"
: >"$dir/serial.log"

run=()
if command -v setpriv >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  run=(setpriv --bounding-set=-dac_override,-dac_read_search --inh-caps=-dac_override,-dac_read_search --)
fi
"${run[@]}" qemu-system-x86_64 \
  -name "$name" -machine q35,accel=tcg -m 256 -smp "${GUEST_SMP:-1}" -nodefaults -display none \
  -serial "file:$dir/serial.log" -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" -append "$append" \
  -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
  -drive "id=disk1,file=$dir/a/disk1.qcow2,format=qcow2,if=none" -device virtio-blk-pci,drive=disk1,id=vd1 \
  -blockdev "driver=file,filename=$dir/b/disk2.raw,node-name=disk2-file" \
  -blockdev driver=raw,file=disk2-file,node-name=disk2 -device virtio-blk-pci,drive=disk2,id=vd2 \
  -device virtio-serial-pci,id=vser0 \
  -chardev "socket,id=qga0,path=$dir/qga.sock,server=on,wait=off" -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -chardev "socket,id=silent0,path=$dir/silent.sock,server=on,wait=off" -device virtserialport,chardev=silent0,name=org.blockrep.silent.0 \
  -chardev "socket,id=dead0,path=$dir/dead.sock,server=on,wait=off" -device virtserialport,chardev=dead0,name=org.blockrep.dead.0 \
  ${GUEST_QEMU_ARGS:-} -pidfile "$dir/qemu.pid" -daemonize

for _ in $(seq 1 600); do
  if grep -q '^blockrep-writer ' "$dir/serial.log" 2>/dev/null; then
    echo "$dir"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/qemu.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
    echo "start-guest: QEMU exited; console:" >&2
    cat "$dir/serial.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "start-guest: the guest did not start writing within 60 s; console:" >&2
cat "$dir/serial.log" >&2
kill "$(cat "$dir/qemu.pid")" 2>/dev/null || true
exit 1
