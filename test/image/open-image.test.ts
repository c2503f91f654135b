import { copyFile, mkdir, readdir, readFile, rename, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageReader, ImageSpec } from '../../src/image/image-reader.js';
import { openImage, probeImage } from '../../src/image/open-image.js';
import { Qcow2Reader } from '../../src/image/qcow2-reader.js';
import { RawReader } from '../../src/image/raw-reader.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';
import {
  convertImage,
  createImage,
  makeTempDir,
  patchFile,
  patternBytes,
  qemuImg,
  qemuIo,
  readFileRange,
  removeTempDir,
  u32be,
  u64be,
} from '../support/qemu-tools.js';
import { expectMatchesOracle } from './image-oracle.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let n = 0;
/** A fresh sub-directory per test, so relative backing names resolve inside it. */
async function subdir(): Promise<string> {
  const d = join(dir, `t${n++}`);
  await mkdir(d);
  return d;
}

beforeAll(async () => {
  dir = await makeTempDir('blockrep-open-');
});

afterAll(async () => {
  await removeTempDir(dir);
});

async function readAll(reader: ImageReader, blockSize = 256 * KiB): Promise<void> {
  const buf = Buffer.alloc(blockSize);
  for (let offset = 0; offset < reader.virtualSize; offset += blockSize) {
    const length = Math.min(blockSize, reader.virtualSize - offset);
    await reader.read(length === blockSize ? buf : buf.subarray(0, length), offset);
  }
}

/** Opens and reads the whole image; resolves with the error it fails with (never a non-Blockrep error). */
async function failure(spec: ImageSpec): Promise<{ code: string; message: string }> {
  let reader: ImageReader | undefined;
  try {
    reader = await openImage(spec);
    await readAll(reader);
    await reader.extents(0, reader.virtualSize);
  } catch (err) {
    if (!isBlockrepError(err)) throw err;
    return { code: err.code, message: err.message };
  } finally {
    await reader?.close();
  }
  throw new Error(`${spec.path} opened and read without an error`);
}

async function openFds(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

const u64At = async (path: string, offset: number): Promise<number> => Number((await readFileRange(path, offset, 8)).readBigUInt64BE());
const OFFSET_MASK = 0x00fffffffffffe00n;

/** Host offset of the L2 table for guest cluster 0. */
async function firstL2Offset(path: string): Promise<number> {
  const l1 = await u64At(path, 40);
  return Number((await readFileRange(path, l1, 8)).readBigUInt64BE() & OFFSET_MASK);
}

describe('openImage: format detection', () => {
  it('detects qcow2 by its magic and everything else as raw', async () => {
    const d = await subdir();
    await createImage(join(d, 'a.qcow2'), { format: 'qcow2', size: MiB });
    await writeFile(join(d, 'a.img'), patternBytes(4096, 1));
    const q = await openImage({ path: join(d, 'a.qcow2') });
    const r = await openImage({ path: join(d, 'a.img') });
    try {
      expect(q).toBeInstanceOf(Qcow2Reader);
      expect(q.format).toBe('qcow2');
      expect(r).toBeInstanceOf(RawReader);
      expect(r.virtualSize).toBe(4096);
    } finally {
      await q.close();
      await r.close();
    }
  });

  it('honours an explicit format', async () => {
    const d = await subdir();
    await createImage(join(d, 'a.qcow2'), { format: 'qcow2', size: MiB });
    const asRaw = await openImage({ path: join(d, 'a.qcow2'), format: 'raw' });
    try {
      expect(asRaw.format).toBe('raw');
      expect(asRaw.virtualSize).toBeLessThan(MiB); // the qcow2 file's own bytes
    } finally {
      await asRaw.close();
    }
    await writeFile(join(d, 'b.img'), Buffer.alloc(8192));
    expect(await failure({ path: join(d, 'b.img'), format: 'qcow2' })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/not a qcow2 image/) });
  });

  it('refuses other image formats by name instead of reading them as raw', async () => {
    const d = await subdir();
    await createImage(join(d, 'a.vmdk'), { format: 'vmdk', size: MiB });
    expect(await failure({ path: join(d, 'a.vmdk') })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/looks like a VMDK image/) });
  });

  it('probeImage describes the chain', async () => {
    const d = await subdir();
    await createImage(join(d, 'base.raw'), { format: 'raw', size: MiB });
    await createImage(join(d, 'top.qcow2'), { format: 'qcow2', backing: 'base.raw', backingFormat: 'raw' });
    expect(await probeImage(join(d, 'top.qcow2'))).toEqual([
      { path: join(d, 'top.qcow2'), format: 'qcow2', virtualSize: MiB, clusterSize: 65536, backingFile: 'base.raw', backingFormat: 'raw' },
      { path: join(d, 'base.raw'), format: 'raw', virtualSize: MiB },
    ]);
  });
});

describe('openImage: backing chains', () => {
  it('follows a depth-3 chain of relative names: raw base with holes ← qcow2 ← qcow2', async () => {
    const d = await subdir();
    const base = join(d, 'base.raw');
    await writeFile(base, '');
    await truncate(base, 4 * MiB);
    await patchFile(base, 0, patternBytes(300 * KiB, 1));
    await patchFile(base, 3 * MiB, patternBytes(200 * KiB, 2));
    await createImage(join(d, 'mid.qcow2'), { format: 'qcow2', backing: 'base.raw', backingFormat: 'raw' });
    await qemuIo(join(d, 'mid.qcow2'), ['write -P 0x21 100000 200000', 'write -z 3200000 100000']);
    await createImage(join(d, 'top.qcow2'), { format: 'qcow2', backing: 'mid.qcow2', backingFormat: 'qcow2', options: { cluster_size: 4096 } });
    await qemuIo(join(d, 'top.qcow2'), ['write -P 0x31 150000 10000', 'write -P 0x32 2000000 5000', 'write -z 0 8192']);
    // Reached from another working directory: names resolve against each image's directory.
    await expectMatchesOracle(join(d, 'top.qcow2'), { oraclePath: join(d, 'top.out'), minZeroBytes: MiB });
    const layers = await probeImage(join(d, 'top.qcow2'));
    expect(layers.map((l) => l.format)).toEqual(['qcow2', 'qcow2', 'raw']);
  });

  it('follows absolute names and relative names across directories, qcow2 base', async () => {
    const d = await subdir();
    await mkdir(join(d, 'a'));
    await mkdir(join(d, 'b'));
    await mkdir(join(d, 'c'));
    const base = join(d, 'a', 'base.qcow2');
    await createImage(base, { format: 'qcow2', size: 3 * MiB, options: { cluster_size: 512 } });
    await qemuIo(base, [`write -P 0x41 0 ${3 * MiB}`, 'write -z 65536 65536']);
    const mid = join(d, 'b', 'mid.qcow2');
    await createImage(mid, { format: 'qcow2', backing: base, backingFormat: 'qcow2' }); // absolute
    await qemuIo(mid, ['write -P 0x42 1000000 100000']);
    const top = join(d, 'c', 'top.qcow2');
    await createImage(top, { format: 'qcow2', backing: '../b/mid.qcow2', backingFormat: 'qcow2', options: { compat: '0.10' } });
    await qemuIo(top, ['write -P 0x43 1050000 1000']);
    await expectMatchesOracle(top, { oraclePath: join(d, 'top.out') });
  });

  it('reads zeros past the end of a backing file shorter than its overlay', async () => {
    const d = await subdir();
    // raw base not a multiple of the cluster size, qcow2 middle shorter than the top
    await writeFile(join(d, 'base.raw'), patternBytes(MiB + 1536, 3));
    await createImage(join(d, 'mid.qcow2'), { format: 'qcow2', size: 2 * MiB + 512, backing: 'base.raw', backingFormat: 'raw' });
    await qemuIo(join(d, 'mid.qcow2'), [`write -P 0x51 ${MiB + 4096} 4096`]);
    await createImage(join(d, 'top.qcow2'), { format: 'qcow2', size: 4 * MiB, backing: 'mid.qcow2', backingFormat: 'qcow2' });
    await qemuIo(join(d, 'top.qcow2'), ['write -P 0x52 0 4096', `write -P 0x53 ${3 * MiB} 4096`]);
    await expectMatchesOracle(join(d, 'top.qcow2'), { oraclePath: join(d, 'top.out'), minZeroBytes: MiB });
    const reader = await openImage({ path: join(d, 'top.qcow2') });
    try {
      // Past the middle image's end and before the top's own write at 3 MiB: zeros.
      const tail = await reader.extents(2 * MiB + 512, MiB - 512);
      expect(tail).toEqual([{ offset: 2 * MiB + 512, length: MiB - 512, kind: 'zero' }]);
    } finally {
      await reader.close();
    }
  });

  it('detects the backing format when the image does not record it', async () => {
    const d = await subdir();
    await writeFile(join(d, 'base.img'), patternBytes(MiB, 4));
    const top = join(d, 'top.qcow2');
    await createImage(top, { format: 'qcow2', backing: 'base.img', backingFormat: 'raw' });
    // Turn the backing format extension into an unknown (ignored) one.
    const header = await readFileRange(top, 0, 4096);
    const at = header.indexOf(u32be(0xe2792aca));
    expect(at).toBeGreaterThan(0);
    await patchFile(top, at, u32be(0x0000abcd));
    const layers = await probeImage(top);
    expect(layers[0]?.backingFormat).toBeUndefined();
    expect(layers[1]?.format).toBe('raw');
    await expectMatchesOracle(top, { oraclePath: join(d, 'top.out') });
  });
});

describe('openImage: refusals', () => {
  it('refuses an encrypted image', async () => {
    const d = await subdir();
    const path = join(d, 'enc.qcow2');
    await createImage(path, {
      format: 'qcow2',
      size: MiB,
      objects: ['secret,id=sec0,data=abc'],
      // iter-time: keep LUKS key derivation short, the test needs no strong key
      options: { 'encrypt.format': 'luks', 'encrypt.key-secret': 'sec0', 'encrypt.iter-time': 10 },
    });
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/encrypted \(LUKS\)/) });
    const aes = join(d, 'aes.qcow2');
    await createImage(aes, { format: 'qcow2', size: MiB, objects: ['secret,id=sec0,data=abc'], options: { 'encrypt.format': 'aes', 'encrypt.key-secret': 'sec0' } });
    expect(await failure({ path: aes })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/encrypted \(AES\)/) });
  });

  it('refuses an image with an external data file', async () => {
    const d = await subdir();
    const path = join(d, 'ext.qcow2');
    await createImage(path, { format: 'qcow2', size: MiB, options: { data_file: join(d, 'ext.data') } });
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/external data file/) });
  });

  it('refuses an image whose corrupt bit is set', async () => {
    const d = await subdir();
    const path = join(d, 'corrupt.qcow2');
    await createImage(path, { format: 'qcow2', size: MiB });
    const byte = (await readFileRange(path, 79, 1))[0] ?? 0;
    await patchFile(path, 79, Uint8Array.of(byte | 0x02)); // incompatible_features bit 1
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/marked corrupt/) });
  });

  it('refuses an unknown incompatible feature, naming the bit', async () => {
    const d = await subdir();
    const path = join(d, 'future.qcow2');
    await createImage(path, { format: 'qcow2', size: MiB });
    await patchFile(path, 72, u64be(1n << 33n));
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/incompatible feature bit 33/) });
  });

  it('refuses a truncated image', async () => {
    const d = await subdir();
    const path = join(d, 'cut.qcow2');
    await convertImage(await rawWithData(d), path, { fromFormat: 'raw', toFormat: 'qcow2' });
    const size = (await readFile(path)).byteLength;
    await truncate(path, size - 100 * KiB);
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/past the end of the file/) });
    await truncate(path, 40);
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/too short for a qcow2 header/) });
  });

  it('refuses an L1 entry that points past the end of the file', async () => {
    const d = await subdir();
    const path = join(d, 'l1.qcow2');
    await convertImage(await rawWithData(d), path, { fromFormat: 'raw', toFormat: 'qcow2' });
    const l1 = await u64At(path, 40);
    await patchFile(path, l1, u64be((1n << 63n) | (1n << 40n)));
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/L1 entry 0 .*past the end of the file/) });
  });

  it('refuses L2 entries that point past the end of the file or are misaligned', async () => {
    const d = await subdir();
    const path = join(d, 'l2.qcow2');
    await convertImage(await rawWithData(d), path, { fromFormat: 'raw', toFormat: 'qcow2' });
    const l2 = await firstL2Offset(path);
    const entry = (await readFileRange(path, l2 + 8, 8)).readBigUInt64BE(); // guest cluster 1
    await patchFile(path, l2 + 8, u64be((1n << 63n) | (1n << 44n)));
    expect(await failure({ path })).toMatchObject({
      code: 'IMAGE_CORRUPT',
      message: expect.stringMatching(/L2 entry for guest offset 65536 .*past the end of the file/),
    });
    await patchFile(path, l2 + 8, u64be(entry + 512n));
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/misaligned host offset/) });
  });

  it('refuses a compressed cluster that does not decompress', async () => {
    const d = await subdir();
    const path = join(d, 'bad.qcow2');
    await convertImage(await rawWithData(d), path, { fromFormat: 'raw', toFormat: 'qcow2', compress: true });
    const l2 = await firstL2Offset(path);
    const entry = (await readFileRange(path, l2, 8)).readBigUInt64BE();
    expect(entry & (1n << 62n)).not.toBe(0n);
    const host = Number(entry & ((1n << 54n) - 1n)); // x = 62 - (16 - 8) = 54
    await patchFile(path, host, Buffer.alloc(64, 0xff));
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_CORRUPT', message: expect.stringMatching(/compressed cluster for guest offset 0 .*does not decompress/) });
  });

  it('refuses a backing loop A → B → A, and A → A', async () => {
    const d = await subdir();
    const a = join(d, 'a.qcow2');
    const b = join(d, 'b.qcow2');
    await createImage(a, { format: 'qcow2', size: MiB });
    await createImage(b, { format: 'qcow2', backing: 'a.qcow2', backingFormat: 'qcow2' });
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', a);
    const before = await openFds();
    const err = await failure({ path: a });
    expect(err.code).toBe('BACKING_LOOP');
    expect(err.message).toContain(`${a} → ${b} → ${a}`);
    expect(await openFds()).toBe(before);

    const self = join(d, 'self.qcow2');
    await createImage(self, { format: 'qcow2', size: MiB });
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'self.qcow2', '-F', 'qcow2', self);
    expect(await failure({ path: self })).toMatchObject({ code: 'BACKING_LOOP' });
  });

  it('refuses a missing backing file, naming it and the image that names it', async () => {
    const d = await subdir();
    await createImage(join(d, 'base.qcow2'), { format: 'qcow2', size: MiB });
    await createImage(join(d, 'mid.qcow2'), { format: 'qcow2', backing: 'base.qcow2', backingFormat: 'qcow2' });
    await createImage(join(d, 'top.qcow2'), { format: 'qcow2', backing: 'mid.qcow2', backingFormat: 'qcow2' });
    await rename(join(d, 'base.qcow2'), join(d, 'moved.qcow2'));
    const before = await openFds();
    const err = await failure({ path: join(d, 'top.qcow2') });
    expect(err.code).toBe('IMAGE_NOT_FOUND');
    expect(err.message).toContain(join(d, 'base.qcow2'));
    expect(err.message).toContain(`'base.qcow2' by ${join(d, 'mid.qcow2')}`);
    expect(await openFds()).toBe(before); // top and mid were closed again
  });

  it('refuses a missing image', async () => {
    const d = await subdir();
    expect(await failure({ path: join(d, 'nope.qcow2') })).toMatchObject({ code: 'IMAGE_NOT_FOUND', message: expect.stringContaining('nope.qcow2') });
  });

  it('refuses a backing file given as a network protocol', async () => {
    const d = await subdir();
    const path = join(d, 'nbd.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd://localhost:10809/x', '-F', 'raw', path, '1M');
    expect(await failure({ path })).toMatchObject({ code: 'IMAGE_UNSUPPORTED', message: expect.stringMatching(/not a local file name/) });
  });

  it('never fails with anything but a BlockrepError on randomly damaged metadata', async () => {
    const d = await subdir();
    const pristine = join(d, 'pristine.qcow2');
    await convertImage(await rawWithData(d), pristine, { fromFormat: 'raw', toFormat: 'qcow2', options: { cluster_size: 4096 } });
    await qemuIo(pristine, ['write -z 4096 8192', 'write -c -P 0x61 1056768 4096']);
    const bytes = await readFile(pristine);
    const l1 = await u64At(pristine, 40);
    const l2 = await firstL2Offset(pristine);
    // Damage the header cluster, the L1 table and the first L2 table.
    const regions = [
      [0, 256], // the header fields and the first extensions
      [l1, 64],
      [l2, 4096],
    ] as const;
    let seed = 7;
    const rand = (limit: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % limit;
    };
    const victim = join(d, 'victim.qcow2');
    const before = await openFds();
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      const damaged = Buffer.from(bytes);
      const [start, length] = regions[i % regions.length] ?? [0, 1];
      for (let k = 0; k < 1 + rand(4); k++) damaged[start + rand(length)] = rand(256);
      await writeFile(victim, damaged);
      try {
        const reader = await openImage({ path: victim });
        try {
          await readAll(reader, 64 * KiB);
          await reader.extents(0, reader.virtualSize);
        } finally {
          await reader.close();
        }
      } catch (err) {
        if (!isBlockrepError(err)) throw new Error(`iteration ${i}: not a BlockrepError: ${String(err)}`, { cause: err });
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(5);
    expect(await openFds()).toBe(before);
    await unlink(victim);
  });
});

/** A 2 MiB raw file with data in most clusters, to convert into qcow2 variants. */
async function rawWithData(d: string): Promise<string> {
  const path = join(d, 'data.raw');
  const raw = Buffer.alloc(2 * MiB);
  patternBytes(MiB, 9, 8).copy(raw, 0);
  patternBytes(512 * KiB, 10, 8).copy(raw, MiB + 256 * KiB);
  await writeFile(path, raw);
  const copy = join(d, `data-${n++}.raw`);
  await copyFile(path, copy);
  return copy;
}
