import { chmod, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitOverlay } from '../../src/hypervisor/block-commit.js';
import { planOverlays, takeLiveSnapshot } from '../../src/hypervisor/live-snapshot.js';
import { OVERLAY_FILE_SUFFIX, commitJobFor } from '../../src/hypervisor/overlay-names.js';
import { listVmDisks } from '../../src/hypervisor/vm-disks.js';
import { tempDir } from '../support/temp-dir.js';
import { activeLayers, exists, guestWrite, imageHolds, makeTwoDisks, skipQemuTests, startPausedVm, withQmp, type PausedDisk, type PausedVm } from './support/paused-vm.js';

/**
 * Snapshot and commit against a real QEMU (paused, no guest OS; guest writes through qemu-io):
 * the snapshot freezes the bases, the commit brings the overlays' writes back and pivots, a
 * failed snapshot leaves nothing behind, a failed commit leaves the VM on its overlay.
 */

const RECOVER = 'blockrep recover --qmp TEST';

describe.skipIf(skipQemuTests)('live snapshot and commit (real QEMU)', () => {
  let dir: string;
  let vm: PausedVm;
  let disks: PausedDisk[];
  let original: Array<{ node: string; file: string; depth: number }>;
  beforeAll(async () => {
    dir = await tempDir('blockrep-snap-');
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

  it('plans overlays next to their bases, with names that say they are blockrep\'s', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const targets = planOverlays((await listVmDisks(qmp)).disks);
      expect(targets.map((t) => [t.label, t.overlayFile])).toEqual([
        ['disk1', join(dir, 'a', `disk1.qcow2${OVERLAY_FILE_SUFFIX}`)],
        ['dev-disk2', join(dir, 'b', `disk2.raw${OVERLAY_FILE_SUFFIX}`)],
      ]);
      for (const t of targets) expect(t.overlayNode).toMatch(/^blockrep-ovl-[0-9a-f]{12}$/);
      expect(targets[0]!.baseFormat).toBe('qcow2');
      expect(targets[1]!.baseFormat).toBe('raw');
    });
  });

  it('switches both disks at once; bases keep the snapshot, commits bring later writes back and pivot', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const targets = planOverlays((await listVmDisks(qmp)).disks);
      const snap = await takeLiveSnapshot(qmp, undefined, targets, { recoveryStep: RECOVER });
      expect(snap.frozenMs).toBeUndefined();
      expect(snap.thawError).toBeUndefined();
      const blocks = (await listVmDisks(qmp)).disks;
      expect(blocks.map((b) => [b.node, b.backingDepth])).toEqual([
        [targets[0]!.overlayNode, 2],
        [targets[1]!.overlayNode, 1],
      ]);
      expect(blocks.map((b) => b.chain[1])).toEqual([disks[0]!.file, disks[1]!.file]);

      // The guest writes; the bases do not change.
      await guestWrite(qmp, disks[0]!, 'write -P 0x13 0 64k');
      await guestWrite(qmp, disks[1]!, 'write -P 0x23 0 64k');
      expect(await imageHolds(disks[0]!.file, 'qcow2', 0x11, '0', '64k')).toBe(true);
      expect(await imageHolds(disks[1]!.file, 'raw', 0x21, '0', '64k')).toBe(true);

      for (const t of targets) {
        const r = await commitOverlay(qmp, t, RECOVER);
        expect(r.overlayDeleted).toBe(true);
        expect(r.pivotedAt).toBeGreaterThanOrEqual(snap.snapshotAt);
      }
    });
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await overlayFiles()).toEqual([]);
    // The writes made on the overlays are in the bases now; the backing file is untouched.
    expect(await imageHolds(disks[0]!.file, 'qcow2', 0x13, '0', '64k')).toBe(true);
    expect(await imageHolds(disks[1]!.file, 'raw', 0x23, '0', '64k')).toBe(true);
    expect(await imageHolds(join(dir, 'a', 'base1.qcow2'), 'qcow2', 0x11, '0', '64k')).toBe(true);
  });

  it('a snapshot that fails (a folder QEMU cannot write) leaves the VM on its images and no overlay file', async () => {
    await chmod(join(dir, 'b'), 0o555);
    try {
      await withQmp(vm.qmpSocket, async (qmp) => {
        const targets = planOverlays((await listVmDisks(qmp)).disks);
        const err = await takeLiveSnapshot(qmp, undefined, targets, { recoveryStep: RECOVER }).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'SNAPSHOT_FAILED', message: expect.stringContaining('original images, unharmed') });
        // QEMU had created disk1's overlay before failing on disk2's: it was removed.
        expect((err as { details: { removed: string[] } }).details.removed).toEqual([targets[0]!.overlayFile]);
      });
    } finally {
      await chmod(join(dir, 'b'), 0o755);
    }
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await overlayFiles()).toEqual([]);
  });

  it('a commit that fails leaves the VM on its overlay and names the recovery step; a retry finishes it', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const [t] = planOverlays((await listVmDisks(qmp)).disks.slice(0, 1));
      await takeLiveSnapshot(qmp, undefined, [t!], { recoveryStep: RECOVER });
      await guestWrite(qmp, disks[0]!, 'write -P 0x14 0 64k');
      const err = await commitOverlay(qmp, { ...t!, baseNode: 'no-such-node' }, RECOVER).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'COMMIT_FAILED', message: expect.stringContaining(`keeps running on the overlay ${t!.overlayFile}`) });
      expect((err as Error).message).toContain(RECOVER);
      expect((await listVmDisks(qmp)).disks[0]!.node).toBe(t!.overlayNode);
      expect(await exists(t!.overlayFile)).toBe(true);
      // Nothing of the failed job is left in QEMU.
      const jobs = await qmp.execute('query-jobs', undefined, z.array(z.object({ id: z.string() })));
      expect(jobs).toEqual([]);
      await commitOverlay(qmp, t!, RECOVER);
    });
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await imageHolds(disks[0]!.file, 'qcow2', 0x14, '0', '64k')).toBe(true);
    expect(await overlayFiles()).toEqual([]);
  });

  it('picks up a commit job a killed run left READY', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const [, t] = planOverlays((await listVmDisks(qmp)).disks);
      await takeLiveSnapshot(qmp, undefined, [t!], { recoveryStep: RECOVER });
      await guestWrite(qmp, disks[1]!, 'write -P 0x24 64k 64k');
      const ready = qmp.waitForEvent('BLOCK_JOB_READY', (d) => d.device === commitJobFor(t!.overlayNode), { timeoutMs: 10_000 });
      await qmp.execute('block-commit', { 'job-id': commitJobFor(t!.overlayNode), device: t!.overlayNode, 'base-node': t!.baseNode, 'auto-dismiss': false }, z.unknown());
      await ready.promise;
      await commitOverlay(qmp, t!, RECOVER);
    });
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await imageHolds(disks[1]!.file, 'raw', 0x24, '64k', '64k')).toBe(true);
    expect(await overlayFiles()).toEqual([]);
  });

  it('does not mistake an old concluded job of the same name for its own', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const [t] = planOverlays((await listVmDisks(qmp)).disks.slice(0, 1));
      const job = commitJobFor(t!.overlayNode);
      // A killed run's commit that pivoted but was never dismissed.
      await takeLiveSnapshot(qmp, undefined, [t!], { recoveryStep: RECOVER });
      const ready = qmp.waitForEvent('BLOCK_JOB_READY', (d) => d.device === job, { timeoutMs: 10_000 });
      await qmp.execute('block-commit', { 'job-id': job, device: t!.overlayNode, 'base-node': t!.baseNode, 'auto-dismiss': false }, z.unknown());
      await ready.promise;
      const done = qmp.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === job && d.status === 'concluded', { timeoutMs: 10_000 });
      await qmp.execute('block-job-complete', { device: job }, z.unknown());
      await done.promise;
      // The next run's snapshot and commit, with the same names.
      await takeLiveSnapshot(qmp, undefined, [t!], { recoveryStep: RECOVER });
      await guestWrite(qmp, disks[0]!, 'write -P 0x16 0 64k');
      await commitOverlay(qmp, t!, RECOVER);
      expect(await qmp.execute('query-jobs', undefined, z.array(z.unknown()))).toEqual([]);
    });
    expect(await activeLayers(vm.qmpSocket)).toEqual(original);
    expect(await imageHolds(disks[0]!.file, 'qcow2', 0x16, '0', '64k')).toBe(true);
    expect(await overlayFiles()).toEqual([]);
  });
});
