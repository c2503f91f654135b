import { readFile } from 'node:fs/promises';
import { expect } from 'vitest';
import type { Extent, ImageReader, ImageSpec } from '../../src/image/image-reader.js';
import { openImage } from '../../src/image/open-image.js';
import { convertToRaw, imageMap } from '../support/qemu-tools.js';

/**
 * The shared check for every reader case: what openImage returns must equal, byte for byte,
 * what `qemu-img convert -O raw` writes, read in blocks of several sizes (an odd one too);
 * extents() must cover ranges exactly, never call non-zero bytes 'zero', and call 'zero'
 * every range that `qemu-img map` says holds no data and reads as zeros.
 */
export interface OracleOptions {
  /** Where to write the oracle raw file. */
  oraclePath: string;
  /** Passed to openImage and qemu-img (-f); omitted: both detect. */
  format?: 'raw' | 'qcow2';
  blockSizes?: number[];
  /** Also demand that extents() reports at least this many zero bytes. */
  minZeroBytes?: number;
}

export const DEFAULT_BLOCK_SIZES = [64 * 1024, 1024 * 1024 + 4096, 12_345];

export async function expectMatchesOracle(imagePath: string, options: OracleOptions): Promise<void> {
  await convertToRaw(imagePath, options.oraclePath, options.format);
  const oracle = await readFile(options.oraclePath);
  const spec: ImageSpec = { path: imagePath, ...(options.format === undefined ? {} : { format: options.format }) };
  const reader = await openImage(spec);
  try {
    expect(reader.virtualSize).toBe(oracle.byteLength);
    for (const blockSize of options.blockSizes ?? DEFAULT_BLOCK_SIZES) {
      await expectSequentialReads(reader, oracle, blockSize);
    }
    await expectConcurrentReads(reader, oracle, 8192 + 512);
    const extents = await reader.extents(0, reader.virtualSize);
    expectExactCover(extents, 0, reader.virtualSize);
    expectZeroExtentsAreZero(extents, oracle);
    const map = await imageMap(imagePath, options.format);
    expectUnallocatedReportedZero(extents, map.filter((m) => !m.data && m.zero));
    if (options.minZeroBytes !== undefined) {
      const zeroBytes = extents.filter((e) => e.kind === 'zero').reduce((n, e) => n + e.length, 0);
      expect(zeroBytes).toBeGreaterThanOrEqual(options.minZeroBytes);
    }
    // Sub-ranges must agree with the whole.
    for (const [offset, length] of subRanges(reader.virtualSize)) {
      const part = await reader.extents(offset, length);
      expectExactCover(part, offset, length);
      expectZeroExtentsAreZero(part, oracle);
    }
  } finally {
    await reader.close();
  }
  // The same through blocking reads (the mode scan workers use).
  const syncReader = await openImage(spec, { syncReads: true });
  try {
    await expectSequentialReads(syncReader, oracle, (options.blockSizes ?? DEFAULT_BLOCK_SIZES).at(-1) ?? 4096);
    await expectConcurrentReads(syncReader, oracle, 4096);
  } finally {
    await syncReader.close();
  }
}

async function expectSequentialReads(reader: ImageReader, oracle: Buffer, blockSize: number): Promise<void> {
  const buf = Buffer.alloc(blockSize);
  for (let offset = 0; offset < reader.virtualSize; offset += blockSize) {
    const length = Math.min(blockSize, reader.virtualSize - offset);
    const view = length === blockSize ? buf : buf.subarray(0, length);
    view.fill(0xee); // so a region the reader forgets to write shows up
    await reader.read(view, offset);
    expectSameBytes(view, oracle.subarray(offset, offset + length), offset, blockSize);
  }
}

/** Several reads in flight on one reader, as a scanner with read-ahead issues them. */
async function expectConcurrentReads(reader: ImageReader, oracle: Buffer, blockSize: number): Promise<void> {
  const inFlight = 6;
  for (let base = 0; base < reader.virtualSize; base += blockSize * inFlight) {
    const jobs: Promise<void>[] = [];
    for (let k = 0; k < inFlight; k++) {
      const offset = base + k * blockSize;
      if (offset >= reader.virtualSize) break;
      const length = Math.min(blockSize, reader.virtualSize - offset);
      const view = Buffer.alloc(length, 0xee);
      jobs.push(reader.read(view, offset).then(() => expectSameBytes(view, oracle.subarray(offset, offset + length), offset, blockSize)));
    }
    await Promise.all(jobs);
  }
}

function expectSameBytes(actual: Uint8Array, expected: Uint8Array, offset: number, blockSize: number): void {
  if (Buffer.compare(actual, expected) === 0) return;
  let i = 0;
  while (i < actual.byteLength && actual[i] === expected[i]) i++;
  expect.fail(
    `block size ${blockSize}: byte ${offset + i} differs from qemu-img convert: got 0x${(actual[i] ?? 0).toString(16)}, want 0x${(expected[i] ?? 0).toString(16)}`,
  );
}

export function expectExactCover(extents: readonly Extent[], offset: number, length: number): void {
  let pos = offset;
  for (const e of extents) {
    expect(e.offset, 'extents must be consecutive').toBe(pos);
    expect(e.length, 'extents must not be empty').toBeGreaterThan(0);
    pos += e.length;
  }
  expect(pos, 'extents must cover the range exactly').toBe(offset + length);
}

export function expectZeroExtentsAreZero(extents: readonly Extent[], oracle: Buffer): void {
  for (const e of extents) {
    if (e.kind !== 'zero') continue;
    const bytes = oracle.subarray(e.offset, e.offset + e.length);
    const nonZero = bytes.findIndex((b) => b !== 0);
    expect(nonZero, `extent [${e.offset}, +${e.length}) is reported zero but byte ${e.offset + nonZero} is not`).toBe(-1);
  }
}

function expectUnallocatedReportedZero(extents: readonly Extent[], zeroRanges: { start: number; length: number }[]): void {
  for (const z of zeroRanges) {
    const end = z.start + z.length;
    for (const e of extents) {
      if (e.kind === 'zero' || e.offset + e.length <= z.start || e.offset >= end) continue;
      expect.fail(`qemu-img map says [${z.start}, ${end}) has no data and reads as zeros, but extents() calls [${e.offset}, +${e.length}) data`);
    }
  }
}

function subRanges(size: number): [number, number][] {
  const picks: [number, number][] = [
    [0, Math.min(size, 1)],
    [Math.floor(size / 3), Math.floor(size / 3)],
    [size - Math.min(size, 777), Math.min(size, 777)],
  ];
  let x = 12345;
  for (let i = 0; i < 5; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const offset = x % size;
    x = (x * 1103515245 + 12345) % 2 ** 31;
    picks.push([offset, x % (size - offset + 1)]);
  }
  return picks;
}
