// A paused QEMU (TCG, -S) with one qcow2 disk (drive d0) and a QMP socket: the live VM of the
// changed-block-tracking benches. Writes reach the disk through HMP qemu-io, not a guest.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GiB, KiB, MiB } from './workload.mjs';

/** "16G", "1T", "512M", "64K" or bytes. */
export function parseSizeArg(s) {
  const m = /^(\d+)([KMGT]?)$/i.exec(s);
  if (!m) throw new Error(`not a size: ${s}`);
  return Number(m[1]) * { '': 1, K: KiB, M: MiB, G: GiB, T: 1024 * GiB }[m[2].toUpperCase()];
}

export function median(xs) {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
}

export function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Starts QEMU daemonized in `dir`; stop() ends it. */
export function startPausedQemu({ dir, disk, name }) {
  const qmpSocket = join(dir, 'qmp.sock');
  sh('qemu-system-x86_64', ['-S', '-name', name, '-machine', 'q35,accel=tcg', '-m', '64', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpSocket},server=on,wait=off`, '-drive', `id=d0,file=${disk},format=qcow2,if=none`, '-device', 'virtio-blk-pci,drive=d0,id=vd0', '-pidfile', join(dir, 'pid'), '-daemonize']);
  const pid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
  return {
    qmpSocket,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {}
      await new Promise((r) => setTimeout(r, 500));
    },
  };
}
