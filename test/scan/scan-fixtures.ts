import { execFileSync } from 'node:child_process';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Extent, ImageFormat, ImageReader } from '../../src/image/image-reader.js';

/**
 * What a test image holds, region by region, in order. 'hole' regions are left unwritten
 * (sparse), 'zeros' are written zeros, 'random' is seeded pseudo-random data, 'text' is
 * compressible.
 */
export type Region = { kind: 'random' | 'zeros' | 'hole' | 'text'; bytes: number; seed?: number };

/** Deterministic bytes for a region (holes and zeros are zero). */
export function regionBytes(region: Region): Buffer {
  const out = Buffer.alloc(region.bytes);
  if (region.kind === 'random') {
    let x = (region.seed ?? 1) >>> 0 || 1;
    for (let i = 0; i + 4 <= out.length; i += 4) {
      // xorshift32: fast, seedable, good enough to defeat compression and collisions here
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      out.writeUInt32LE(x, i);
    }
  } else if (region.kind === 'text') {
    out.write('blockrep scans blocks; '.repeat(Math.ceil(region.bytes / 23)).slice(0, region.bytes), 'latin1');
  }
  return out;
}

/** Writes a raw image made of `regions`, leaving holes unwritten; returns its bytes. */
export async function writeRawImage(path: string, regions: Region[]): Promise<Buffer> {
  const file = await open(path, 'w');
  const parts: Buffer[] = [];
  let offset = 0;
  try {
    for (const region of regions) {
      const bytes = regionBytes(region);
      if (region.kind !== 'hole') await file.write(bytes, 0, bytes.length, offset);
      parts.push(bytes);
      offset += region.bytes;
    }
    await file.truncate(offset);
  } finally {
    await file.close();
  }
  return Buffer.concat(parts);
}

/** qemu-img convert to qcow2; with -S, zero runs of the source stay unallocated. */
export function convertToQcow2(raw: string, qcow2: string): void {
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
}

/**
 * Damages a qcow2 image the way a torn write could: the L2 entry mapping `guestOffset` is
 * pointed past the end of the file. Header and L1 table stay valid, so the image opens, and
 * the damage shows only when that cluster is reached.
 */
export async function corruptQcow2L2Entry(path: string, guestOffset: number): Promise<void> {
  const file = await open(path, 'r+');
  try {
    const header = Buffer.alloc(48);
    await file.read(header, 0, 48, 0);
    const clusterBits = header.readUInt32BE(20); // cluster_bits @20
    const clusterSize = 2 ** clusterBits;
    const l1Offset = Number(header.readBigUInt64BE(40)); // l1_table_offset @40
    const l2PerTable = clusterSize / 8;
    const cluster = Math.floor(guestOffset / clusterSize);
    const l1Entry = Buffer.alloc(8);
    await file.read(l1Entry, 0, 8, l1Offset + 8 * Math.floor(cluster / l2PerTable));
    const l2Offset = Number(l1Entry.readBigUInt64BE(0) & 0x00fffffffffffe00n);
    if (l2Offset === 0) throw new Error(`guest offset ${guestOffset} has no L2 table to damage`);
    const { size } = await file.stat();
    const pastEnd = (Math.ceil(size / clusterSize) + 100) * clusterSize;
    const entry = Buffer.alloc(8);
    entry.writeBigUInt64BE((1n << 63n) | BigInt(pastEnd)); // COPIED flag, standard cluster
    await file.write(entry, 0, 8, l2Offset + 8 * (cluster % l2PerTable));
  } finally {
    await file.close();
  }
}

/**
 * The reference: each block cut out of the image file with `split` and hashed by xxhsum
 * (Debian's C xxHash), one process for all blocks — independent of xxhash-wasm.
 */
export async function xxhsumBlockHashes(path: string, blockSize: number, dir: string): Promise<bigint[]> {
  const prefix = join(dir, 'block-');
  execFileSync('split', ['-b', String(blockSize), '-d', '-a', '6', path, prefix]);
  const names = (await readdir(dir)).filter((n) => n.startsWith('block-')).sort();
  const out = execFileSync('xxhsum', ['-H1', ...names.map((n) => join(dir, n))], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const byName = new Map<string, bigint>();
  for (const line of out.trim().split('\n')) {
    const [hex, file] = line.trim().split(/\s+/);
    byName.set(file!, BigInt(`0x${hex}`));
  }
  return names.map((n) => byName.get(join(dir, n))!);
}

/**
 * An in-memory reader for the unit tests of the scanner: `zeroExtents` are reported as zero
 * extents (they must really be zero), everything else as data. Counts the bytes it reads.
 */
export class MemoryReader implements ImageReader {
  readonly path = 'memory';
  readonly format: ImageFormat = 'raw';
  readonly virtualSize: number;
  bytesRead = 0;
  concurrentReads = 0;
  maxConcurrentReads = 0;

  constructor(
    private readonly bytes: Buffer,
    private readonly zeroExtents: Array<{ offset: number; length: number }> = [],
    private readonly failAt?: number,
  ) {
    this.virtualSize = bytes.length;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.concurrentReads++;
    this.maxConcurrentReads = Math.max(this.maxConcurrentReads, this.concurrentReads);
    await new Promise((r) => setImmediate(r));
    this.concurrentReads--;
    if (this.failAt !== undefined && offset <= this.failAt && this.failAt < offset + buf.byteLength) {
      const { BlockrepError } = await import('../../src/shared/blockrep-error.js');
      throw new BlockrepError('IMAGE_CORRUPT', `memory: bad data at ${this.failAt}`);
    }
    buf.set(this.bytes.subarray(offset, offset + buf.byteLength));
    this.bytesRead += buf.byteLength;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const end = offset + length;
    const out: Extent[] = [];
    let at = offset;
    for (const z of [...this.zeroExtents].sort((a, b) => a.offset - b.offset)) {
      const from = Math.max(z.offset, at);
      const to = Math.min(z.offset + z.length, end);
      if (to <= from) continue;
      if (from > at) out.push({ offset: at, length: from - at, kind: 'data' });
      out.push({ offset: from, length: to - from, kind: 'zero' });
      at = to;
    }
    if (at < end) out.push({ offset: at, length: end - at, kind: 'data' });
    return out;
  }

  async close(): Promise<void> {}
}
