import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupImage } from '../../src/app/backup-image.js';
import { decideScan, dirtyBlockRanges, latestVersionFacts, mergeRanges, sampleCleanBlocks, type TrackerState } from '../../src/app/scan-plan.js';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { openImage } from '../../src/image/open-image.js';
import { Repository } from '../../src/repository/index.js';
import { createImage, makeTempDir, qemuIo, removeTempDir } from '../support/qemu-tools.js';
import { startQemuNbd } from '../nbd/support/qemu-nbd.js';

/**
 * backupImage's tracked read: only the blocks a tracker calls dirty (plus a random sample of the
 * others) are read, the rest keep the latest version's entries, and the result equals a full
 * read. The frozen base is an image file here (a live run differs only in who says what is
 * dirty); the same image served by qemu-nbd stands for libvirt's pull-mode export.
 */

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const record = { method: 'qemu-bitmap' as const, chain: 'c0ffee0000000001', point: 'blockrep-c0ffee0000000001-g1', granularity: BLOCK };
const tracker = (point: string | undefined): TrackerState => ({ method: 'qemu-bitmap', chain: record.chain, point, granularity: BLOCK });

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('blockrep-tracked-');
});
afterAll(async () => removeTempDir(dir));

async function entriesOf(repo: Repository, disk: string, version: string): Promise<string> {
  const m = await repo.openManifest(disk, version);
  const out: string[] = [];
  for await (const e of m.batches()) for (let i = 0; i < e.hashes.length; i++) out.push(`${e.hashes[i]}:${e.ids.toString('hex', i * 32, i * 32 + 32)}`);
  return out.join('\n');
}

async function fresh(name: string): Promise<{ repo: Repository; image: string }> {
  const repo = await Repository.open(new LocalBackend(join(dir, `${name}-repo`)), { create: true });
  const image = join(dir, `${name}.qcow2`);
  await createImage(image, { format: 'qcow2', size: 16 * MiB });
  await qemuIo(image, ['write -P 0x11 0 4M', 'write -P 0x22 8M 2M']);
  return { repo, image };
}

describe('a tracked read', () => {
  it('reads only the dirty blocks and a sample, and publishes what a full read would', async () => {
    const { repo, image } = await fresh('ok');
    const first = await backupImage(repo, { path: image, diskId: 'vm/disk', blockSize: BLOCK, source: { kind: 'live', vm: 'vm' }, tracked: { basedOn: undefined, decision: { scan: 'full', reason: 'first-backup' }, record } });
    expect(first).toMatchObject({ scan: 'full', scanReason: 'first-backup' });
    const header1 = await repo.versionHeader('vm/disk', first.version);
    expect(header1.meta.tracking).toMatchObject({ ...record, fullScanMs: expect.any(Number) });

    // The guest writes 3 scattered ranges; the tracker reports them (at its granularity).
    await qemuIo(image, ['write -P 0x33 100k 10k', 'write -P 0x44 5M 192k', 'write -z 8M 64k']);
    const latest = await latestVersionFacts(repo, 'vm/disk');
    const next = { ...record, point: 'blockrep-c0ffee0000000001-g2' };
    const decision = decideScan(latest, tracker(record.point), { nowMs: Date.now(), fullScanEveryMs: 7 * 86400_000 });
    expect(decision).toEqual({ scan: 'bitmap' });
    const dirty = [{ offset: 64 * 1024, length: 64 * 1024 }, { offset: 5 * MiB, length: 192 * 1024 }, { offset: 8 * MiB, length: 64 * 1024 }];
    const tracked = await backupImage(repo, { path: image, diskId: 'vm/disk', source: { kind: 'live', vm: 'vm' }, tracked: { basedOn: latest!.versionId, decision, dirty, record: next, sampleBlocks: 20 } });
    expect(tracked.scan).toBe('bitmap');
    expect(tracked.scanReason).toBeUndefined();
    expect(tracked.sampledBlocks).toBe(20);
    expect(tracked.changedBlocks).toBe(5);
    // 5 dirty blocks and 20 sampled, of 256: far less than the disk.
    expect(tracked.bytesRead).toBeLessThanOrEqual(25 * BLOCK);
    const header2 = await repo.versionHeader('vm/disk', tracked.version);
    expect(header2.meta.scan).toBe('bitmap');
    expect(header2.meta.tracking).toEqual({ ...next, fullScanMs: header1.meta.tracking!.fullScanMs });

    // The oracle: a full read of the same state finds nothing changed and the same entries.
    const full = await backupImage(repo, { path: image, diskId: 'vm/disk', source: { kind: 'live', vm: 'vm' } });
    expect(full.changedBlocks).toBe(0);
    expect(full.scan).toBe('full');
    expect(await entriesOf(repo, 'vm/disk', full.version)).toBe(await entriesOf(repo, 'vm/disk', tracked.version));
  });

  it('fails loudly and publishes nothing when a block the tracker calls clean has changed', async () => {
    const { repo, image } = await fresh('mismatch');
    const first = await backupImage(repo, { path: image, diskId: 'vm/disk', blockSize: BLOCK, source: { kind: 'live', vm: 'vm' }, tracked: { basedOn: undefined, decision: { scan: 'full', reason: 'first-backup' }, record } });
    await qemuIo(image, ['write -P 0x55 12M 64k']); // a write the tracker "missed"
    const attempt = backupImage(repo, {
      path: image,
      diskId: 'vm/disk',
      source: { kind: 'live', vm: 'vm' },
      // Every clean block sampled, so the missed write is found whatever the random draw.
      tracked: { basedOn: first.version, decision: { scan: 'bitmap' }, dirty: [], record: { ...record, point: 'g2' }, sampleBlocks: 256 },
    });
    await expect(attempt).rejects.toMatchObject({ code: 'TRACKING_MISMATCH' });
    expect(await repo.listVersions('vm/disk')).toEqual([first.version]);
  });

  it('reads everything when the latest version is not the one the decision was made against', async () => {
    const { repo, image } = await fresh('moved');
    const first = await backupImage(repo, { path: image, diskId: 'vm/disk', blockSize: BLOCK, source: { kind: 'live', vm: 'vm' }, tracked: { basedOn: undefined, decision: { scan: 'full', reason: 'first-backup' }, record } });
    const r = await backupImage(repo, { path: image, diskId: 'vm/disk', source: { kind: 'live', vm: 'vm' }, tracked: { basedOn: 'an-older-version', decision: { scan: 'bitmap' }, dirty: [], record } });
    expect(r).toMatchObject({ scan: 'full', scanReason: 'latest-changed', changedBlocks: 0 });
    expect(r.bytesRead).toBeGreaterThan(0);
    expect(first.version).not.toBe(r.version);
  });

  it('reads a disk over NBD as the file reads (qemu-nbd as the export)', async () => {
    const { repo, image } = await fresh('nbd');
    await qemuIo(image, ['write -P 0x66 15M 1M']);
    const socket = join(dir, 'nbd.sock');
    const server = await startQemuNbd({ image, format: 'qcow2', socketPath: socket, exportName: 'vda' });
    try {
      const viaNbd = await backupImage(repo, { path: 'vda of the test VM', format: 'qcow2', diskId: 'vm/nbd', blockSize: BLOCK, source: { kind: 'live', vm: 'vm' }, nbd: { address: { kind: 'unix', path: socket }, exportName: 'vda' } });
      const viaFile = await backupImage(repo, { path: image, diskId: 'vm/nbd' });
      expect(viaFile.changedBlocks).toBe(0);
      expect(await entriesOf(repo, 'vm/nbd', viaNbd.version)).toBe(await entriesOf(repo, 'vm/nbd', viaFile.version));
      // Unallocated space is known zero through base:allocation, so it is not read.
      expect(viaNbd.bytesRead).toBeLessThan(16 * MiB);
      const reader = await openImage({ path: 'x', nbd: { address: { kind: 'unix', path: socket }, exportName: 'vda' } });
      expect((await reader.extents(0, 16 * MiB)).some((e) => e.kind === 'zero')).toBe(true);
      await reader.close();
    } finally {
      await server.stop();
    }
  });
});

describe('never wrong: decideScan', () => {
  const latest = { versionId: 'v1', blockSize: BLOCK, imageBytes: 16 * MiB, sourceKind: 'live' as const, tracking: { ...record, fullScanMs: 1000 } };
  const now = { nowMs: 2000 };
  it.each([
    ['first-backup', undefined, tracker(record.point), now],
    ['offline-parent', { ...latest, sourceKind: 'image' as const, tracking: undefined }, tracker(record.point), now],
    ['untracked-parent', { ...latest, tracking: undefined }, tracker(record.point), now],
    ['chain-changed', latest, { ...tracker(record.point), chain: 'other' }, now],
    ['chain-changed', latest, tracker('blockrep-c0ffee0000000001-g7'), now],
    ['bitmap-missing', latest, tracker(undefined), now],
    ['qemu-restarted', { ...latest, tracking: { ...latest.tracking, persistent: false } }, tracker(undefined), now],
    ['bitmap-inconsistent', latest, { ...tracker(record.point), problem: 'bitmap-inconsistent' as const }, now],
    ['granularity-changed', latest, { ...tracker(record.point), granularity: 2 * BLOCK }, now],
    ['full-scan-requested', latest, tracker(record.point), { ...now, fullScan: true }],
    ['full-scan-due', latest, tracker(record.point), { nowMs: 1000 + 7 * 86400_000, fullScanEveryMs: 7 * 86400_000 }],
  ] as const)('%s', (reason, l, t, policy) => {
    expect(decideScan(l, t, policy)).toEqual({ scan: 'full', reason });
  });
  it('trusts a tracker that counts since exactly the latest version', () => {
    expect(decideScan(latest, tracker(record.point), { nowMs: 1000 + 86400_000, fullScanEveryMs: 7 * 86400_000 })).toEqual({ scan: 'bitmap' });
  });
});

describe('block ranges', () => {
  it('covers every dirty byte with whole blocks, merged', () => {
    expect(dirtyBlockRanges([{ offset: 1, length: 1 }, { offset: 4095, length: 2 }, { offset: 3 * 4096, length: 4096 }, { offset: 10 * 4096, length: 100 * 4096 }], 4096, 20)).toEqual([
      { start: 0, count: 2 },
      { start: 3, count: 1 },
      { start: 10, count: 10 },
    ]);
  });
  it('samples distinct clean blocks only', () => {
    const dirty = [{ start: 2, count: 3 }, { start: 10, count: 5 }];
    for (let round = 0; round < 50; round++) {
      const s = sampleCleanBlocks(dirty, 20, 12);
      expect(s).toHaveLength(12);
      const blocks = s.map((r) => r.start);
      expect(new Set(blocks).size).toBe(12);
      for (const b of blocks) expect(b >= 0 && b < 20 && !(b >= 2 && b < 5) && !(b >= 10 && b < 15)).toBe(true);
      expect(mergeRanges(dirty, s).reduce((n, r) => n + r.count, 0)).toBe(20);
    }
  });
});

