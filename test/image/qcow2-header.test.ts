import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeQcow2Header,
  qcow2HeaderAreaBytes,
  qcow2HeaderExtension,
  qcow2IncompatibleFeatureName,
} from '../../src/image/qcow2-header.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { createImage, makeTempDir, readFileRange, removeTempDir } from '../support/qemu-tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A minimal synthetic v3 header in a 64 KiB first cluster, for fields qemu-img will not write. */
interface Synthetic {
  version?: number;
  clusterBits?: number;
  size?: bigint;
  cryptMethod?: number;
  l1Size?: number;
  l1TableOffset?: bigint;
  incompatible?: bigint;
  headerLength?: number;
  compressionType?: number;
  backingName?: string;
  extensions?: { type: number; data: Uint8Array }[];
  length?: number;
}

function synthetic(s: Synthetic = {}): Buffer {
  const clusterBits = s.clusterBits ?? 16;
  const buf = Buffer.alloc(64 * KiB);
  buf.writeUInt32BE(0x514649fb, 0);
  buf.writeUInt32BE(s.version ?? 3, 4);
  buf.writeUInt32BE(clusterBits, 20);
  buf.writeBigUInt64BE(s.size ?? BigInt(MiB), 24);
  buf.writeUInt32BE(s.cryptMethod ?? 0, 32);
  buf.writeUInt32BE(s.l1Size ?? 1, 36);
  buf.writeBigUInt64BE(s.l1TableOffset ?? 0x30000n, 40);
  buf.writeBigUInt64BE(0x10000n, 48);
  buf.writeUInt32BE(1, 56);
  const headerLength = s.headerLength ?? 112;
  if ((s.version ?? 3) === 3) {
    buf.writeBigUInt64BE(s.incompatible ?? 0n, 72);
    buf.writeUInt32BE(4, 96);
    buf.writeUInt32BE(headerLength, 100);
    buf[104] = s.compressionType ?? 0;
  }
  let off = (s.version ?? 3) === 3 ? headerLength : 72;
  for (const ext of s.extensions ?? []) {
    buf.writeUInt32BE(ext.type, off);
    buf.writeUInt32BE(ext.data.byteLength, off + 4);
    Buffer.from(ext.data).copy(buf, off + 8);
    off += 8 + Math.ceil(ext.data.byteLength / 8) * 8;
  }
  off += 8; // end-of-extensions marker (zeros)
  if (s.backingName !== undefined) {
    buf.writeBigUInt64BE(BigInt(off), 8);
    buf.writeUInt32BE(Buffer.byteLength(s.backingName), 16);
    buf.write(s.backingName, off);
  }
  return s.length === undefined ? buf : buf.subarray(0, s.length);
}

function featureTable(entries: { type: number; bit: number; name: string }[]): Uint8Array {
  const data = Buffer.alloc(entries.length * 48);
  entries.forEach((e, i) => {
    data[i * 48] = e.type;
    data[i * 48 + 1] = e.bit;
    data.write(e.name, i * 48 + 2);
  });
  return data;
}

function refusal(buf: Uint8Array): BlockrepError {
  try {
    decodeQcow2Header(buf, 'x.qcow2');
  } catch (err) {
    expect(err).toBeInstanceOf(BlockrepError);
    return err as BlockrepError;
  }
  throw new Error('expected the header to be refused');
}

describe('decodeQcow2Header on headers qemu-img writes', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await makeTempDir('blockrep-qcow2-header-');
  });
  afterAll(async () => {
    await removeTempDir(dir);
  });

  async function headerOf(path: string) {
    const first = await readFileRange(path, 0, 4096);
    return decodeQcow2Header(await readFileRange(path, 0, qcow2HeaderAreaBytes(first)), path);
  }

  it('decodes a v3 image with a backing file and its format', async () => {
    const base = join(dir, 'base.raw');
    const top = join(dir, 'top.qcow2');
    await createImage(base, { format: 'raw', size: MiB });
    await createImage(top, { format: 'qcow2', size: 3 * MiB, backing: 'base.raw', backingFormat: 'raw', options: { cluster_size: 4096 } });
    const h = await headerOf(top);
    expect(h).toMatchObject({
      version: 3,
      clusterBits: 12,
      clusterSize: 4096,
      virtualSize: 3 * MiB,
      cryptMethod: 0,
      backingFile: 'base.raw',
      backingFormat: 'raw',
      compressionType: 'zlib',
      extendedL2: false,
      l2Entries: 512,
      l1EntriesUsed: 2,
      refcountOrder: 4,
    });
    expect(h.headerLength).toBeGreaterThanOrEqual(104);
    expect(qcow2IncompatibleFeatureName(h, 1)).toBe('corrupt bit');
  });

  it('decodes v2 (compat=0.10), zstd and extended L2 headers', async () => {
    const v2 = join(dir, 'v2.qcow2');
    await createImage(v2, { format: 'qcow2', size: MiB, options: { compat: '0.10' } });
    expect(await headerOf(v2)).toMatchObject({ version: 2, headerLength: 72, incompatibleFeatures: 0n, backingFile: undefined });

    const zstd = join(dir, 'zstd.qcow2');
    await createImage(zstd, { format: 'qcow2', size: MiB, options: { compression_type: 'zstd' } });
    expect(await headerOf(zstd)).toMatchObject({ compressionType: 'zstd', incompatibleFeatures: 1n << 3n });

    const ext = join(dir, 'ext.qcow2');
    await createImage(ext, { format: 'qcow2', size: 5 * MiB, options: { extended_l2: 'on', cluster_size: 2 * MiB } });
    expect(await headerOf(ext)).toMatchObject({ extendedL2: true, clusterSize: 2 * MiB, l2Entries: 2 * MiB / 16 });
  });
});

describe('decodeQcow2Header refusals', () => {
  it('accepts the synthetic baseline', () => {
    expect(decodeQcow2Header(synthetic({ backingName: '../b.img' }), 'x.qcow2')).toMatchObject({ version: 3, backingFile: '../b.img' });
  });

  it.each([
    ['a truncated header', { length: 50 }, 'IMAGE_CORRUPT', /too short.*truncated/],
    ['a bad magic', {}, 'IMAGE_CORRUPT', /not a qcow2 image \(bad magic/],
    ['version 1', { version: 1 }, 'IMAGE_UNSUPPORTED', /qcow2 version 1 is not supported/],
    ['version 4', { version: 4 }, 'IMAGE_UNSUPPORTED', /qcow2 version 4/],
    ['cluster_bits 8', { clusterBits: 8 }, 'IMAGE_CORRUPT', /cluster_bits 8 is below the minimum/],
    ['cluster_bits 22', { clusterBits: 22 }, 'IMAGE_UNSUPPORTED', /cluster size 2\^22 bytes is above/],
    ['AES encryption', { cryptMethod: 1 }, 'IMAGE_UNSUPPORTED', /encrypted \(AES\)/],
    ['LUKS encryption', { cryptMethod: 2 }, 'IMAGE_UNSUPPORTED', /encrypted \(LUKS\)/],
    [
      'an encryption extension',
      { extensions: [{ type: qcow2HeaderExtension.encryption, data: new Uint8Array(16) }] },
      'IMAGE_UNSUPPORTED',
      /encrypted/,
    ],
    ['the corrupt bit', { incompatible: 1n << 1n }, 'IMAGE_CORRUPT', /marked corrupt/],
    ['the external data file bit', { incompatible: 1n << 2n }, 'IMAGE_UNSUPPORTED', /external data file/],
    [
      'an external data file extension',
      { extensions: [{ type: qcow2HeaderExtension.externalDataFile, data: Buffer.from('data.raw') }] },
      'IMAGE_UNSUPPORTED',
      /external data file 'data.raw'/,
    ],
    ['an unknown incompatible bit', { incompatible: 1n << 40n }, 'IMAGE_UNSUPPORTED', /unknown incompatible feature bit 40/],
    [
      'an unknown incompatible bit named in the feature table',
      {
        incompatible: (1n << 5n) | 1n,
        extensions: [{ type: qcow2HeaderExtension.featureNames, data: featureTable([{ type: 0, bit: 5, name: 'frobnicated clusters' }]) }],
      },
      'IMAGE_UNSUPPORTED',
      /'frobnicated clusters' \(bit 5\)/,
    ],
    ['an unknown compression type', { compressionType: 7, incompatible: 1n << 3n }, 'IMAGE_UNSUPPORTED', /compression type 7/],
    ['zstd without its feature bit', { compressionType: 1 }, 'IMAGE_CORRUPT', /does not match/],
    ['extended L2 with small clusters', { clusterBits: 12, incompatible: 1n << 4n }, 'IMAGE_CORRUPT', /at least 16 KiB/],
    ['a bad header_length', { headerLength: 100 }, 'IMAGE_CORRUPT', /header_length 100/],
    ['a size beyond 2^53', { size: 1n << 60n }, 'IMAGE_CORRUPT', /field size \(offset 24\)/],
    ['an L1 table too small for the size', { size: 1n << 40n }, 'IMAGE_CORRUPT', /L1 table \(1 entries\) is too small/],
    ['an L1 table over 32 MiB', { l1Size: 5_000_000 }, 'IMAGE_UNSUPPORTED', /L1 table has 5000000 entries/],
    ['a misaligned L1 table', { l1TableOffset: 0x30200n }, 'IMAGE_CORRUPT', /L1 table offset 197120 is not aligned/],
    [
      'an extension overrunning the header cluster',
      { extensions: [{ type: 0x12345678, data: new Uint8Array(8) }] },
      'IMAGE_CORRUPT',
      /overruns/,
    ],
  ] as const)('refuses %s', (_name, fields, code, message) => {
    const buf = synthetic(fields as Synthetic);
    if (_name === 'a bad magic') buf[3] = 0xfa;
    if (_name === 'an extension overrunning the header cluster') buf.writeUInt32BE(70_000, 112 + 4);
    const err = refusal(buf);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    expect(err.message).toContain('x.qcow2');
  });

  it('refuses a backing file name that is too long or cut off', () => {
    const long = synthetic({ backingName: 'b'.repeat(1024) });
    expect(refusal(long).message).toMatch(/backing file name/);
    const cut = synthetic({ backingName: 'base.img' }).subarray(0, 124); // the name starts at 120
    expect(refusal(cut)).toMatchObject({ code: 'IMAGE_CORRUPT' });
  });

  it('ignores the dirty bit and unknown compatible bits and extensions', () => {
    const buf = synthetic({ incompatible: 1n, extensions: [{ type: 0x0badf00d, data: new Uint8Array(13) }] });
    buf.writeBigUInt64BE(0xffn, 80);
    expect(decodeQcow2Header(buf, 'x.qcow2')).toMatchObject({ dirty: true, compatibleFeatures: 0xffn });
  });
});
