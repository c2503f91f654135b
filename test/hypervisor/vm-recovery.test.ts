import { spawnSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planOverlays, takeLiveSnapshot } from '../../src/hypervisor/live-snapshot.js';
import { OVERLAY_FILE_SUFFIX, commitJobFor } from '../../src/hypervisor/overlay-names.js';
import { listVmDisks } from '../../src/hypervisor/vm-disks.js';
import { VmLock, vmLockPathFor } from '../../src/hypervisor/vm-lock.js';
import { recoverVmState } from '../../src/hypervisor/vm-recovery.js';
import { run } from '../support/qemu-tools.js';
import { tempDir } from '../support/temp-dir.js';
import { activeLayers, exists, guestWrite, imageHolds, makeTwoDisks, skipQemuTests, startPausedVm, withQmp, type PausedDisk, type PausedVm } from './support/paused-vm.js';

/**
 * Recovery from every state a killed run can leave a VM in (real QEMU, paused), and the per-VM
 * lock that keeps two runs apart.
 */

const RECOVER = 'blockrep recover --qmp TEST';

describe.skipIf(skipQemuTests)('recoverVmState (real QEMU)', () => {
  let dir: string;
  let vm: PausedVm;
  let disks: PausedDisk[];
  let original: Array<{ node: string; file: string; depth: number }>;
  beforeAll(async () => {
    dir = await tempDir('blockrep-recover-');
    disks = await makeTwoDisks(dir);
    vm = await startPausedVm(join(dir, 'vm'), disks);
    original = await activeLayers(vm.qmpSocket);
  });
  afterAll(async () => {
    await vm?.stop();
  });

  async function overlayFiles(): Promise<string[]> {
    const out: string[] = [];
    for (const sub of ['a', 'b']) for (const n of await readdir(join(dir, sub))) if (n.endsWith(OVERLAY_FILE_SUFFIX)) out.push(join(sub, n));
    return out;
  }

  it('does nothing on a VM that needs nothing', async () => {
    const report = await withQmp(vm.qmpSocket, (qmp) => recoverVmState(qmp, undefined, { recoveryStep: RECOVER }));
    expect(report).toMatchObject({ thawed: false, agentState: 'not-checked', jobs: [], committed: [], removedFiles: [], warnings: [] });
  });

  it('commits overlays a killed run left active (one with its commit job READY, one with none)', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const targets = planOverlays((await listVmDisks(qmp)).disks);
      await takeLiveSnapshot(qmp, undefined, targets, { recoveryStep: RECOVER });
      await guestWrite(qmp, disks[0]!, 'write -P 0x15 0 64k');
      await guestWrite(qmp, disks[1]!, 'write -P 0x25 0 64k');
      // Killed while committing disk1: its job waits READY, nobody completes it.
      const t = targets[0]!;
      const ready = qmp.waitForEvent('BLOCK_JOB_READY', (d) => d.device === commitJobFor(t.overlayNode), { timeoutMs: 10_000 });
      await qmp.execute('block-commit', { 'job-id': commitJobFor(t.overlayNode), device: t.overlayNode, 'base-node': t.baseNode, 'auto-dismiss': false }, z.unknown());
      await ready.promise;
    });
    // ... and the run is gone (its connection closed). Recovery on a new connection:
    const report = await withQmp(vm.qmpSocket, (qmp) => recoverVmState(qmp, undefined, { recoveryStep: RECOVER }));
    expect(report.jobs).toEqual([{ job: expect.stringMatching(/^blockrep-commit-/), status: 'concluded' }]);
    expect(report.committed).toEqual([{ disk: 'dev-disk2', overlay: join(dir, 'b', `disk2.raw${OVERLAY_FILE_SUFFIX}`) }]);
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await overlayFiles()).toEqual([]);
    expect(await imageHolds(disks[0]!.file, 'qcow2', 0x15, '0', '64k')).toBe(true);
    expect(await imageHolds(disks[1]!.file, 'raw', 0x25, '0', '64k')).toBe(true);
  });

  it('removes overlay files nobody has open, and only those', async () => {
    const stray = join(dir, 'a', `disk1.qcow2${OVERLAY_FILE_SUFFIX}`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', stray, '8M']);
    const unrelated = join(dir, 'a', `other.qcow2${OVERLAY_FILE_SUFFIX}`);
    await writeFile(unrelated, 'not ours to judge');
    const report = await withQmp(vm.qmpSocket, (qmp) => recoverVmState(qmp, undefined, { recoveryStep: RECOVER }));
    expect(report.removedFiles).toEqual([stray]);
    expect(await exists(stray)).toBe(false);
    expect(await exists(unrelated)).toBe(true);
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
  });
});

describe('VmLock', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir('blockrep-vmlock-');
  });

  it('lets one run at a time work on a VM, and says who holds it', async () => {
    const socket = join(dir, 'vm1.sock');
    const lock = await VmLock.acquire(socket, 'live backup');
    expect(JSON.parse(await readFile(vmLockPathFor(socket), 'utf8'))).toMatchObject({ pid: process.pid, host: hostname(), purpose: 'live backup' });
    // Another process holds it (a lock file naming a live process other than us: our parent).
    await lock.release();
    await writeFile(vmLockPathFor(socket), JSON.stringify({ pid: process.ppid, host: hostname(), createdAt: '2026-01-01T00:00:00Z', purpose: 'live backup' }));
    await expect(VmLock.acquire(socket, 'recovery')).rejects.toMatchObject({
      code: 'VM_LOCKED',
      message: expect.stringContaining(`live backup by process ${process.ppid}`),
    });
  });

  it('takes over a lock whose process is dead, or whose pid now belongs to another process', async () => {
    const socket = join(dir, 'vm2.sock');
    const dead = spawnSync('true');
    await writeFile(vmLockPathFor(socket), JSON.stringify({ pid: dead.pid, host: hostname(), createdAt: '2026-01-01T00:00:00Z', purpose: 'live backup' }));
    const a = await VmLock.acquire(socket, 'live backup');
    await a.release();
    await writeFile(vmLockPathFor(socket), JSON.stringify({ pid: process.ppid, host: hostname(), startTime: '1', createdAt: '2026-01-01T00:00:00Z', purpose: 'live backup' }));
    const b = await VmLock.acquire(socket, 'live backup');
    await b.release();
    expect(await exists(vmLockPathFor(socket))).toBe(false);
  });

  it('never takes over a lock held on another host', async () => {
    const socket = join(dir, 'vm3.sock');
    await writeFile(vmLockPathFor(socket), JSON.stringify({ pid: 1, host: 'elsewhere', createdAt: '2026-01-01T00:00:00Z', purpose: 'live backup' }));
    await expect(VmLock.acquire(socket, 'live backup')).rejects.toMatchObject({ code: 'VM_LOCKED', message: expect.stringContaining('on elsewhere') });
  });
});
