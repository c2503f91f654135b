import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitOverlay } from '../../src/hypervisor/block-commit.js';
import {
  addBitmapAction,
  bitmapChainId,
  bitmapName,
  disableBitmapAction,
  listDirtyBitmaps,
  mergeBitmapsAction,
  parseBitmapName,
  readCopyName,
  removeBitmapAction,
  runBitmapTransaction,
} from '../../src/hypervisor/dirty-bitmaps.js';
import { listBlockExports, startNbdExport } from '../../src/hypervisor/nbd-export.js';
import { NbdClient } from '../../src/nbd/index.js';
import { run } from '../support/qemu-tools.js';
import { tempDir } from '../support/temp-dir.js';
import { activeLayers, guestWrite, makeTwoDisks, skipQemuTests, startPausedVm, withQmp, type PausedDisk, type PausedVm } from './support/paused-vm.js';

/**
 * Changed-block tracking's QEMU side against a real QEMU (paused, guest writes through qemu-io):
 * bitmaps count guest writes, are exported over QEMU's NBD server with the base, and — the fact
 * the whole scheme rests on — a bitmap added to the base in the snapshot's own transaction
 * records what the commit writes back into the base. `nbdinfo --map` is the oracle.
 */

const KiB = 1024;
const MiB = 1024 * KiB;

interface MapExtent {
  offset: number;
  length: number;
  type: number;
}

/** Dirty ranges of a bitmap context, as blockrep's NBD client reads them (merged runs). */
async function clientDirtyRanges(socket: string, exportName: string, context: string): Promise<Array<[number, number]>> {
  const client = await NbdClient.connect({ address: { kind: 'unix', path: socket }, exportName, metaContexts: [context] });
  try {
    const out: Array<[number, number]> = [];
    for await (const e of client.extents(context, 0, client.info.exportBytes)) {
      if ((e.flags & 1) === 0) continue;
      const last = out[out.length - 1];
      if (last && last[1] === e.offset) last[1] = e.offset + e.length;
      else out.push([e.offset, e.offset + e.length]);
    }
    return out;
  } finally {
    await client.close();
  }
}

/** Dirty ranges of a bitmap context, as nbdinfo (libnbd) reads them from the export. */
async function dirtyRanges(socket: string, exportName: string, context: string): Promise<Array<[number, number]>> {
  const { stdout } = await run('nbdinfo', ['--json', `--map=${context}`, `nbd+unix:///${exportName}?socket=${socket}`]);
  const extents = z.array(z.object({ offset: z.number(), length: z.number(), type: z.number() }).loose()).parse(JSON.parse(stdout)) as MapExtent[];
  return extents.filter((e) => (e.type & 1) === 1).map((e) => [e.offset, e.offset + e.length]);
}

describe.skipIf(skipQemuTests)('dirty bitmaps and NBD exports (real QEMU)', () => {
  let dir: string;
  let vm: PausedVm;
  let disks: PausedDisk[];
  let qcowNode: string;
  const rawNode = 'disk2';
  beforeAll(async () => {
    dir = await tempDir('blockrep-cbt-');
    disks = await makeTwoDisks(dir);
    vm = await startPausedVm(join(dir, 'vm'), disks);
    const layers = await activeLayers(vm.qmpSocket);
    qcowNode = layers.find((l) => l.file.endsWith('disk1.qcow2'))!.node;
  });
  afterAll(async () => {
    await vm?.stop();
  });

  it('names its bitmaps by repository, disk and generation, and knows only its own', () => {
    const a = bitmapChainId('repo-1', 'web/vda');
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(bitmapChainId('repo-2', 'web/vda')).not.toBe(a);
    expect(bitmapChainId('repo-1', 'web/vdb')).not.toBe(a);
    expect(parseBitmapName(bitmapName(a, 7))).toEqual({ chain: a, generation: 7 });
    expect(parseBitmapName(readCopyName(a, 7))).toEqual({ chain: a, generation: 7, readCopy: true });
    expect(parseBitmapName(`${bitmapName(a, 7)}-copy`)).toBeUndefined();
    for (const foreign of ['backup-vda', 'libvirt-tmp', `blockrep-${a}`, `blockrep-${a}-gx`, `blockrep-XYZ-g1`]) expect(parseBitmapName(foreign)).toBeUndefined();
  });

  it('counts guest writes; exported with its node, nbdinfo sees exactly the written clusters; the export goes away whole', async () => {
    const chain = bitmapChainId('repo-cbt', 'pausedvm/disk1');
    const qref = { node: qcowNode, name: bitmapName(chain, 1) };
    const rref = { node: rawNode, name: bitmapName(chain, 1) };
    await withQmp(vm.qmpSocket, async (qmp) => {
      // qcow2 v3 keeps bitmaps across restarts; a raw file can only hold a transient one.
      await runBitmapTransaction(qmp, [addBitmapAction(qref, { persistent: true }), addBitmapAction(rref, { persistent: false, granularity: 64 * KiB })]);
      await guestWrite(qmp, disks[0]!, 'write -P 0x31 2M 64k');
      await guestWrite(qmp, disks[0]!, 'write -P 0x32 5M 4k');
      await guestWrite(qmp, disks[1]!, 'write -P 0x33 3M 128k');
      // An exported bitmap must not record: disable it first (a copy in the real procedure).
      await runBitmapTransaction(qmp, [disableBitmapAction(qref), disableBitmapAction(rref)]);
      const qbm = (await listDirtyBitmaps(qmp, qcowNode)).find((b) => b.name === qref.name)!;
      expect(qbm).toMatchObject({ persistent: true, recording: false, busy: false, count: 128 * KiB });

      const socket = join(dir, 'nbd.sock');
      const exp = await startNbdExport(qmp, { socketPath: socket, node: qcowNode, name: 'disk1', bitmaps: [qref.name] });
      try {
        expect((await listDirtyBitmaps(qmp, qcowNode)).find((b) => b.name === qref.name)?.busy).toBe(true);
        const expected = [
          [2 * MiB, 2 * MiB + 64 * KiB],
          [5 * MiB, 5 * MiB + 64 * KiB],
        ];
        expect(await dirtyRanges(socket, 'disk1', `qemu:dirty-bitmap:${qref.name}`)).toEqual(expected);
        // blockrep's own client reads the same map from QEMU's server.
        expect(await clientDirtyRanges(socket, 'disk1', `qemu:dirty-bitmap:${qref.name}`)).toEqual(expected);
      } finally {
        await exp.close();
      }
      expect(await listBlockExports(qmp)).toEqual([]);
      expect((await listDirtyBitmaps(qmp, qcowNode)).find((b) => b.name === qref.name)?.busy).toBe(false);

      // The server is stopped with its export: a second export on the raw disk starts cleanly.
      const exp2 = await startNbdExport(qmp, { socketPath: socket, node: rawNode, name: 'disk2', bitmaps: [rref.name] });
      try {
        expect(await dirtyRanges(socket, 'disk2', `qemu:dirty-bitmap:${rref.name}`)).toEqual([[3 * MiB, 3 * MiB + 128 * KiB]]);
      } finally {
        await exp2.close();
      }
      await runBitmapTransaction(qmp, [removeBitmapAction(qref), removeBitmapAction(rref)]);
      expect((await listDirtyBitmaps(qmp, qcowNode)).map((b) => b.name)).not.toContain(qref.name);
    });
  });

  it('a bitmap added to the base in the snapshot transaction records the writes the commit brings back', async () => {
    const chain = bitmapChainId('repo-cbt', 'pausedvm/disk2');
    const reference = { node: rawNode, name: bitmapName(chain, 1) };
    const next = { node: rawNode, name: bitmapName(chain, 2) };
    const overlayFile = join(dir, 'b', 'disk2.raw.test-overlay.qcow2');
    await withQmp(vm.qmpSocket, async (qmp) => {
      await runBitmapTransaction(qmp, [addBitmapAction(reference, { persistent: false })]);
      await guestWrite(qmp, disks[1]!, 'write -P 0x41 1M 64k');
      // One instant: the disk switches to an overlay and the next generation starts on the base
      // (addressed by node name: after the snapshot the device name means the overlay).
      await qmp.execute(
        'transaction',
        {
          actions: [
            { type: 'blockdev-snapshot-sync', data: { 'node-name': rawNode, 'snapshot-file': overlayFile, 'snapshot-node-name': 'disk2-test-overlay', format: 'qcow2' } },
            addBitmapAction(next, { persistent: false }),
          ],
        },
        z.object({}).loose(),
      );
      // The guest writes into the overlay while the base is frozen; neither bitmap sees it yet.
      await guestWrite(qmp, disks[1]!, 'write -P 0x42 6M 64k');
      expect((await listDirtyBitmaps(qmp, rawNode)).find((b) => b.name === next.name)?.count).toBe(0);
      await commitOverlay(qmp, { label: 'disk2', overlayNode: 'disk2-test-overlay', overlayFile, baseNode: rawNode, baseFile: disks[1]!.file }, 'test');
      const after = await listDirtyBitmaps(qmp, rawNode);
      // The next generation holds exactly what was written after the snapshot; the reference
      // holds that and everything since the previous version: a superset, never less.
      expect(after.find((b) => b.name === next.name)?.count).toBe(64 * KiB);
      expect(after.find((b) => b.name === reference.name)?.count).toBe(128 * KiB);
      // Merging keeps a superset when a run fails and its generation is dropped.
      await runBitmapTransaction(qmp, [mergeBitmapsAction(rawNode, reference.name, [next.name]), removeBitmapAction(next)]);
      expect((await listDirtyBitmaps(qmp, rawNode)).find((b) => b.name === reference.name)?.count).toBe(128 * KiB);
      await runBitmapTransaction(qmp, [removeBitmapAction(reference)]);
    });
  });

  it('refuses a node that does not exist, and an export of a recording bitmap, leaving no server behind', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      await expect(listDirtyBitmaps(qmp, 'no-such-node')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      const ref = { node: rawNode, name: bitmapName(bitmapChainId('r', 'd'), 3) };
      await runBitmapTransaction(qmp, [addBitmapAction(ref, { persistent: false })]);
      const socket = join(dir, 'nbd2.sock');
      await expect(startNbdExport(qmp, { socketPath: socket, node: rawNode, name: 'bad', bitmaps: [ref.name] })).rejects.toMatchObject({ code: 'QMP_ERROR' });
      // The failed export stopped the server it had started: a good one can start now.
      const exp = await startNbdExport(qmp, { socketPath: socket, node: rawNode, name: 'good' });
      await exp.close();
      await runBitmapTransaction(qmp, [removeBitmapAction(ref)]);
    });
  });
});
