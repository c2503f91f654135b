#!/usr/bin/env bash
# Builds blockrep's tiny test guest from Debian packages: a cloud kernel and an initramfs with
# busybox, the QEMU guest agent (with blockrep's fsfreeze hook runner, the guest hooks of
# guest/fsfreeze-hook.d and a hook that records its calls) and a writer that keeps appending
# numbered records to every data disk (scripts/guest/). Boots in about 3 s under TCG. The result is cached in
# .cache/test-guest/ (or $BLOCKREP_GUEST_DIR) and rebuilt only when a guest file changes.
# Prints the folder holding vmlinuz and initrd.img.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${BLOCKREP_GUEST_DIR:-$root/.cache/test-guest}"
guest_src="$root/scripts/guest"

# One build at a time (test files start in parallel).
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# What the result depends on: this script and the guest-side files.
hooks_src="$root/guest"
key="$(cat "$0" "$guest_src/init" "$guest_src/writer.sh" "$guest_src/fsfreeze-record" "$hooks_src/fsfreeze-hook" "$hooks_src"/fsfreeze-hook.d/* | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$key" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  echo "$out"
  exit 0
fi

# Host packages the build needs (and that the tests use to run the guest).
need=()
# The guest needs a static busybox (the busybox package's is dynamic).
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
[ -x /usr/sbin/qemu-ga ] || need+=(qemu-guest-agent)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "build-test-guest: needs these Debian packages: ${need[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
busybox_bin=/bin/busybox

mkdir -p "$out/debs"
work="$(mktemp -d -t blockrep-guest-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The kernel: the package that Debian's linux-image-cloud-amd64 currently points at.
kernel_deb=""
pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1 || true)"
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1 || true)"
fi
if [ -n "$pkg" ]; then
  kernel_deb="$(ls "$out/debs/${pkg}_"*.deb 2>/dev/null | head -1 || true)"
  if [ -z "$kernel_deb" ]; then
    (cd "$out/debs" && apt-get download -q "$pkg" >/dev/null 2>&1) || (apt-get update -qq && cd "$out/debs" && apt-get download -q "$pkg" >/dev/null) || true
    kernel_deb="$(ls "$out/debs/${pkg}_"*.deb 2>/dev/null | head -1 || true)"
  fi
fi
if [ -z "$kernel_deb" ]; then
  # Offline: any cloud kernel package already downloaded.
  kernel_deb="$(ls "$out"/debs/linux-image-*-cloud-amd64_*.deb /var/cache/apt/archives/linux-image-[0-9]*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)"
fi
if [ -z "$kernel_deb" ]; then
  echo "build-test-guest: could not get a linux-image-*-cloud-amd64 package (apt-get download failed)" >&2
  exit 1
fi
dpkg-deb -x "$kernel_deb" "$work/kernel"
vmlinuz="$(ls "$work"/kernel/boot/vmlinuz-* | head -1)"
kver="${vmlinuz##*/vmlinuz-}"
moddir="$work/kernel/lib/modules/$kver"

# The initramfs tree.
rd="$work/rd"
mkdir -p "$rd"/{bin,sbin,dev,proc,sys,run,tmp,mnt,lib/modules,usr/sbin,etc}
cp "$busybox_bin" "$rd/bin/busybox"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console; do
  f="$(find "$moddir" -name "$m.ko*" | head -1)"
  [ -n "$f" ] || { echo "build-test-guest: module $m not found in $kernel_deb" >&2; exit 1; }
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$rd/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$rd/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$rd/lib/modules/$m.ko" ;;
    *) cp "$f" "$rd/lib/modules/$m.ko" ;;
  esac
done
cp /usr/sbin/qemu-ga "$rd/usr/sbin/qemu-ga"
for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
  mkdir -p "$rd$(dirname "$lib")"
  cp -L "$lib" "$rd$lib"
done
install -m 0755 "$guest_src/init" "$rd/init"
install -m 0755 "$guest_src/writer.sh" "$rd/writer.sh"
# qemu-ga -F runs /etc/qemu/fsfreeze-hook: blockrep's runner (a failing hook fails the freeze),
# the recording hook first, then the database hooks (no database here: they do nothing).
mkdir -p "$rd/etc/qemu/fsfreeze-hook.d"
install -m 0755 "$hooks_src/fsfreeze-hook" "$rd/etc/qemu/fsfreeze-hook"
install -m 0755 "$guest_src/fsfreeze-record" "$rd/etc/qemu/fsfreeze-hook.d/00-record"
for h in "$hooks_src"/fsfreeze-hook.d/*; do install -m 0755 "$h" "$rd/etc/qemu/fsfreeze-hook.d/${h##*/}"; done
(cd "$rd" && find . | sort | "$busybox_bin" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.img"

cp "$vmlinuz" "$out/vmlinuz.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
cp "$work/initrd.img" "$out/initrd.img.new"
mv "$out/initrd.img.new" "$out/initrd.img"
echo "$kver" >"$out/kernel-version"
echo "$key" >"$out/stamp"
echo "$out"
