import { spawn } from 'node:child_process';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { QmpClient } from '../../../src/hypervisor/qmp-client.js';
import { run } from '../../support/qemu-tools.js';

/**
 * A real QEMU with no guest OS, paused (-S): snapshot, commit, jobs and QMP all work on it, and
 * it starts in a fraction of a second. Guest writes are simulated with qemu-io through HMP.
 * QEMU runs without CAP_DAC_OVERRIDE (as an unprivileged QEMU would), so a folder that its owner
 * cannot write is not writable for it either.
 */

export interface PausedDisk {
  /** -drive id, or -blockdev node name (the device id is then "dev-<id>"). */
  id: string;
  style: 'drive' | 'blockdev';
  file: string;
  format: 'raw' | 'qcow2';
}

export interface PausedVm {
  dir: string;
  qmpSocket: string;
  pid: number;
  disks: PausedDisk[];
  stop(): Promise<void>;
}

/** Whether these tests were explicitly switched off; never decided silently. */
export const skipQemuTests = process.env.BLOCKREP_SKIP_QEMU_TESTS === '1';

export async function startPausedVm(dir: string, disks: PausedDisk[], name = 'pausedvm', extraArgs: string[] = []): Promise<PausedVm> {
  await mkdir(dir, { recursive: true });
  const qmpSocket = join(dir, 'qmp.sock');
  const pidFile = join(dir, 'qemu.pid');
  const args = ['-S', '-name', name, '-machine', 'q35,accel=tcg', '-m', '64', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpSocket},server=on,wait=off`];
  for (const d of disks) {
    if (d.style === 'drive') {
      args.push('-drive', `id=${d.id},file=${d.file},format=${d.format},if=none`, '-device', `virtio-blk-pci,drive=${d.id},id=dev-${d.id}`);
    } else {
      args.push('-blockdev', `driver=file,filename=${d.file},node-name=${d.id}-file`);
      args.push('-blockdev', `driver=${d.format},file=${d.id}-file,node-name=${d.id}`, '-device', `virtio-blk-pci,drive=${d.id},id=dev-${d.id}`);
    }
  }
  args.push(...extraArgs, '-pidfile', pidFile, '-daemonize');
  await run('setpriv', ['--bounding-set=-dac_override,-dac_read_search', '--inh-caps=-dac_override,-dac_read_search', '--', 'qemu-system-x86_64', ...args]);
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return {
    dir,
    qmpSocket,
    pid,
    disks,
    stop: async () => {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      process.kill(pid, 'SIGKILL');
    },
  };
}

/** Runs `fn` with a fresh QMP connection, closed afterwards. */
export async function withQmp<T>(socket: string, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const qmp = await QmpClient.connect(socket);
  try {
    return await fn(qmp);
  } finally {
    await qmp.close();
  }
}

/** A guest write, through QEMU's block layer (HMP qemu-io on the disk's device). */
export async function guestWrite(qmp: QmpClient, disk: PausedDisk, command: string): Promise<void> {
  const target = disk.style === 'drive' ? disk.id : `-d /machine/peripheral/dev-${disk.id}/virtio-backend`;
  const out = await qmp.execute('human-monitor-command', { 'command-line': `qemu-io ${target} "${command}"` }, z.string());
  if (/error|failed/i.test(out)) throw new Error(`qemu-io ${command} on ${disk.id}: ${out}`);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Spawns a program and resolves when it exits (for tools that must not be awaited through execFile). */
export function spawnWait(program: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(program, args, { stdio: 'ignore' });
    p.on('error', reject);
    p.on('exit', (code) => resolve(code ?? 1));
  });
}

/**
 * The test guest's layout, without a guest: a/disk1.qcow2 over a/base1.qcow2 attached with
 * -drive (id disk1), and b/disk2.raw attached with -blockdev (node disk2), each 8 MiB, in two
 * folders. disk1 holds 0x11 at 0..1M (in the base) and 0x12 at 1M..2M (in the top layer);
 * disk2 holds 0x21 at 0..1M.
 */
export async function makeTwoDisks(dir: string): Promise<PausedDisk[]> {
  await mkdir(join(dir, 'a'), { recursive: true });
  await mkdir(join(dir, 'b'), { recursive: true });
  const base = join(dir, 'a', 'base1.qcow2');
  const top = join(dir, 'a', 'disk1.qcow2');
  const raw = join(dir, 'b', 'disk2.raw');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', base]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base1.qcow2', '-F', 'qcow2', top]);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x12 1M 1M', top]);
  await run('qemu-img', ['create', '-q', '-f', 'raw', raw, '8M']);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x21 0 1M', raw]);
  return [
    { id: 'disk1', style: 'drive', file: top, format: 'qcow2' },
    { id: 'disk2', style: 'blockdev', file: raw, format: 'raw' },
  ];
}

/** Checks a pattern in an image that QEMU has open (qemu-io -U: shared, read-only). */
export async function imageHolds(file: string, format: string, pattern: number, offset: string, length: string): Promise<boolean> {
  const { stdout } = await run('qemu-io', ['-r', '-U', '-f', format, '-c', `read -P 0x${pattern.toString(16)} ${offset} ${length}`, file]).catch((e: Error) => ({ stdout: e.message }));
  return !/Pattern verification failed|error|failed/i.test(stdout);
}

/** query-block's view of each disk: active node, file, backing depth. */
export async function activeLayers(socket: string): Promise<Array<{ node: string; file: string; depth: number }>> {
  return withQmp(socket, async (qmp) => {
    const blocks = await qmp.execute(
      'query-block',
      undefined,
      z.array(z.object({ inserted: z.object({ 'node-name': z.string(), file: z.string(), backing_file_depth: z.number() }).optional() })),
    );
    return blocks.flatMap((b) => (b.inserted ? [{ node: b.inserted['node-name'], file: b.inserted.file, depth: b.inserted.backing_file_depth }] : []));
  });
}
