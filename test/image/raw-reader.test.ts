import { open, stat, truncate, writeFile } from 'node:fs/promises';
import { sysfsBlockDeviceBytes } from '../../src/image/image-file.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSeekAddon } from '../../src/image/native-seek.js';
import { openImage } from '../../src/image/open-image.js';
import { RawReader } from '../../src/image/raw-reader.js';
import { createImage, makeTempDir, patternBytes, removeTempDir, run } from '../support/qemu-tools.js';
import { expectExactCover, expectMatchesOracle } from './image-oracle.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

let dir: string;

beforeAll(async () => {
  dir = await makeTempDir('blockrep-raw-');
});

afterAll(async () => {
  await removeTempDir(dir);
});

/** Writes `data` at `offset` without truncating: everything not written stays a hole. */
async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.byteLength, offset);
  } finally {
    await fh.close();
  }
}

async function sparseFile(name: string, size: number, writes: [number, Uint8Array][]): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, '');
  await truncate(path, size);
  for (const [offset, data] of writes) await writeAt(path, offset, data);
  return path;
}

describe('RawReader', () => {
  it('has the native lseek addon here, so hole detection below is real', () => {
    expect(loadSeekAddon(), 'native/build/Release/blockrep_native.node should be built by npm install').not.toBeNull();
  });

  it('reads a sparse raw file like qemu-img and reports its holes as zero', async () => {
    const path = await sparseFile('holes.raw', 6 * MiB, [
      [0, patternBytes(64 * KiB, 1)],
      [2 * MiB + 4096, patternBytes(100 * KiB, 2)],
      [6 * MiB - 8192, patternBytes(8192, 3)],
    ]);
    await expectMatchesOracle(path, { oraclePath: join(dir, 'holes.out'), format: 'raw', minZeroBytes: 5 * MiB });
    const reader = await RawReader.open(path);
    try {
      const extents = await reader.extents(0, reader.virtualSize);
      // The hole between the first two writes is reported zero (block granularity: 4 KiB).
      expect(extents).toContainEqual({ offset: 64 * KiB, length: 2 * MiB + 4096 - 64 * KiB, kind: 'zero' });
      expect(extents[0]).toEqual({ offset: 0, length: 64 * KiB, kind: 'data' });
    } finally {
      await reader.close();
    }
  });

  it('reports the holes of a raw file made by qemu-img create', async () => {
    const path = join(dir, 'empty.raw');
    await createImage(path, { format: 'raw', size: 32 * MiB });
    const reader = await openImage({ path });
    try {
      expect(reader.format).toBe('raw');
      // qemu-img writes the first 4 KiB (zeros) so that it can probe the alignment later.
      expect(await reader.extents(0, reader.virtualSize)).toEqual([
        { offset: 0, length: 4096, kind: 'data' },
        { offset: 4096, length: 32 * MiB - 4096, kind: 'zero' },
      ]);
      expect(await reader.extents(MiB + 5, 10)).toEqual([{ offset: MiB + 5, length: 10, kind: 'zero' }]);
      expect(await reader.extents(0, 0)).toEqual([]);
    } finally {
      await reader.close();
    }
  });

  it('reports everything as data without hole detection (the fallback when the addon is missing)', async () => {
    const path = await sparseFile('fallback.raw', 2 * MiB, [[MiB, patternBytes(4096, 4)]]);
    const reader = await RawReader.open(path, { detectHoles: false });
    try {
      expect(await reader.extents(0, reader.virtualSize)).toEqual([{ offset: 0, length: 2 * MiB, kind: 'data' }]);
      const buf = Buffer.alloc(4096);
      await reader.read(buf, MiB);
      expect(buf.equals(patternBytes(4096, 4))).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it('rounds a size that is not a whole sector up to one, reading zeros, as QEMU does', async () => {
    const path = join(dir, 'odd.raw');
    await writeFile(path, patternBytes(1000, 5));
    await expectMatchesOracle(path, { oraclePath: join(dir, 'odd.out'), format: 'raw', blockSizes: [512, 333] });
    const reader = await RawReader.open(path);
    try {
      expect(reader.virtualSize).toBe(1024);
      expect(await reader.extents(0, 1024)).toEqual([
        { offset: 0, length: 1000, kind: 'data' },
        { offset: 1000, length: 24, kind: 'zero' },
      ]);
    } finally {
      await reader.close();
    }
  });

  it('finds the data in a 1 TiB sparse file quickly, without reading the holes', async () => {
    const size = 1024 * GiB;
    const path = await sparseFile('huge.raw', size, [
      [512 * GiB, patternBytes(4096, 6)],
      [size - 4096, patternBytes(4096, 7)],
    ]);
    const reader = await RawReader.open(path);
    try {
      const started = performance.now();
      const extents = await reader.extents(0, size);
      const elapsedMs = performance.now() - started;
      expect(extents).toEqual([
        { offset: 0, length: 512 * GiB, kind: 'zero' },
        { offset: 512 * GiB, length: 4096, kind: 'data' },
        { offset: 512 * GiB + 4096, length: size - 4096 - (512 * GiB + 4096), kind: 'zero' },
        { offset: size - 4096, length: 4096, kind: 'data' },
      ]);
      expect(elapsedMs).toBeLessThan(50);
      const parts = await reader.extents(GiB, 511 * GiB + 100);
      expectExactCover(parts, GiB, 511 * GiB + 100);
      const buf = Buffer.alloc(4096);
      await reader.read(buf, 512 * GiB);
      expect(buf.equals(patternBytes(4096, 6))).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it('refuses reads and extents outside the image', async () => {
    const path = await sparseFile('small.raw', 4096, []);
    const reader = await RawReader.open(path);
    try {
      await expect(reader.read(Buffer.alloc(512), 4096 - 511)).rejects.toMatchObject({ code: 'INTERNAL' });
      await expect(reader.extents(4000, 100)).rejects.toMatchObject({ code: 'INTERNAL' });
    } finally {
      await reader.close();
    }
  });

  it('reads a block device (a loop device over a file)', async (ctx) => {
    const backingFile = join(dir, 'loop.raw');
    await writeFile(backingFile, patternBytes(3 * MiB, 8));
    let device: string;
    try {
      device = (await run('losetup', ['--find', '--show', '--read-only', backingFile])).stdout.trim();
    } catch (err) {
      ctx.skip(`no loop device available here: ${String(err)}`);
      return;
    }
    try {
      const reader = await openImage({ path: device, format: 'raw' });
      try {
        expect(reader.virtualSize).toBe(3 * MiB);
        // The size without the addon's lseek(SEEK_END): sysfs.
        expect(await sysfsBlockDeviceBytes((await stat(device)).rdev)).toBe(3 * MiB);
        await expectMatchesOracle(device, { oraclePath: join(dir, 'loop.out'), format: 'raw', blockSizes: [MiB] });
      } finally {
        await reader.close();
      }
    } finally {
      await run('losetup', ['-d', device]);
    }
  });
});
