import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backingNodeOf, deviceIdOfQdev, listVmDisks } from '../../src/hypervisor/vm-disks.js';
import { run } from '../support/qemu-tools.js';
import { tempDir } from '../support/temp-dir.js';
import { skipQemuTests, startPausedVm, withQmp, type PausedVm } from './support/paused-vm.js';

/** Disk discovery against a real QEMU with every way of attaching a disk that blockrep meets. */

describe('deviceIdOfQdev', () => {
  it('takes the device id out of a peripheral path', () => {
    expect(deviceIdOfQdev('/machine/peripheral/vd2/virtio-backend')).toBe('vd2');
    expect(deviceIdOfQdev('/machine/peripheral-anon/device[3]/virtio-backend')).toBeUndefined();
    expect(deviceIdOfQdev(undefined)).toBeUndefined();
  });
});

describe.skipIf(skipQemuTests)('listVmDisks', () => {
  let dir: string;
  let vm: PausedVm;
  beforeAll(async () => {
    dir = await tempDir('blockrep-disks-');
    const f = (n: string): string => join(dir, n);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', f('d1-base.qcow2'), '4M']);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'd1-base.qcow2', '-F', 'qcow2', f('d1.qcow2')]);
    await run('qemu-img', ['create', '-q', '-f', 'raw', f('d2.raw'), '5M']);
    await run('qemu-img', ['create', '-q', '-f', 'raw', f('d3.raw'), '6M']);
    await run('qemu-img', ['create', '-q', '-f', 'raw', f('d4-base.raw'), '7M']);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'd4-base.raw', '-F', 'raw', f('d4-mid.qcow2')]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'd4-mid.qcow2', '-F', 'qcow2', f('d4.qcow2')]);
    await run('qemu-img', ['create', '-q', '-f', 'raw', f('ro.raw'), '1M']);
    vm = await startPausedVm(join(dir, 'vm'), [
      { id: 'd1', style: 'drive', file: f('d1.qcow2'), format: 'qcow2' },
      { id: 'd2', style: 'blockdev', file: f('d2.raw'), format: 'raw' },
      { id: 'd3', style: 'drive', file: f('d3.raw'), format: 'raw' },
      { id: 'd4', style: 'blockdev', file: f('d4.qcow2'), format: 'qcow2' },
    ]);
  });
  afterAll(async () => {
    await vm?.stop();
  });

  it('finds -drive and -blockdev disks, raw and qcow2, with their backing chains', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const { disks, skipped } = await listVmDisks(qmp);
      expect(skipped).toEqual([]);
      const byId = Object.fromEntries(disks.map((d) => [d.id, d]));
      expect(Object.keys(byId).sort()).toEqual(['d1', 'd3', 'dev-d2', 'dev-d4']);
      expect(byId.d1).toMatchObject({ device: 'd1', file: join(dir, 'd1.qcow2'), format: 'qcow2', backingDepth: 1, virtualSize: 4 << 20, readOnly: false });
      expect(byId.d1!.chain).toEqual([join(dir, 'd1.qcow2'), join(dir, 'd1-base.qcow2')]);
      expect(byId['dev-d2']).toMatchObject({ device: undefined, node: 'd2', file: join(dir, 'd2.raw'), format: 'raw', backingDepth: 0, virtualSize: 5 << 20 });
      expect(byId.d3).toMatchObject({ device: 'd3', driver: 'raw', format: 'raw', backingDepth: 0 });
      expect(byId['dev-d4']).toMatchObject({ node: 'd4', format: 'qcow2', backingDepth: 2 });
      expect(byId['dev-d4']!.chain).toEqual([join(dir, 'd4.qcow2'), join(dir, 'd4-mid.qcow2'), join(dir, 'd4-base.raw')]);
      // -drive nodes get generated names; the backing link is found through the block graph.
      expect(byId.d1!.node).toMatch(/^#block/);
      expect(await backingNodeOf(qmp, byId.d1!.node)).toMatch(/^#block/);
      expect(await backingNodeOf(qmp, 'd2')).toBeUndefined();
    });
  });

  it('skips read-only disks and empty drives', async () => {
    const vm2 = await startPausedVm(join(dir, 'vm2'), [], 'vm2', [
      '-drive', `id=ro,file=${join(dir, 'ro.raw')},format=raw,if=none,readonly=on`, '-device', 'virtio-blk-pci,drive=ro,id=rodev',
      '-drive', 'id=cd0,if=none,media=cdrom', '-device', 'ide-cd,drive=cd0,bus=ide.0',
    ]);
    try {
      await withQmp(vm2.qmpSocket, async (qmp) => {
        const { disks, skipped } = await listVmDisks(qmp);
        expect(disks).toEqual([]);
        expect(skipped).toEqual([
          { id: 'ro', reason: 'read-only' },
          { id: 'cd0', reason: 'no medium' },
        ]);
      });
    } finally {
      await vm2.stop();
    }
  });
});
