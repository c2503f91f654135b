import { readdirSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import xxhash from 'xxhash-wasm';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeChunk } from '../../src/chunk/chunk-codec.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { scanImage, scanImageTuned, zeroBlockHash, type ScanBatch, type ScanOptions } from '../../src/scan/scan-image.js';
import { tempDir } from '../support/temp-dir.js';
import { convertToQcow2, corruptQcow2L2Entry, writeRawImage, xxhsumBlockHashes, type Region } from './scan-fixtures.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const blockSize = 256 * KiB;

// 9 MiB + 8 KiB + 512: several segments at 8 MiB each, a short last block, holes, zeros, text.
const regions: Region[] = [
  { kind: 'random', bytes: 2 * MiB, seed: 11 },
  { kind: 'hole', bytes: 2 * MiB },
  { kind: 'zeros', bytes: 1 * MiB },
  { kind: 'text', bytes: 1 * MiB + 100 * KiB },
  { kind: 'random', bytes: 3 * MiB - 100 * KiB + 8 * KiB + 512, seed: 12 },
];

let dir: string;
let rawPath: string;
let qcow2Path: string;
let image: Buffer;
let reference: bigint[];

interface Collected {
  batches: ScanBatch[];
  hashes: bigint[];
  zero: number[];
  changed: number[];
  chunks: ScanBatch['chunks'];
  bytesRead: number;
}

async function collect(iterable: AsyncIterable<ScanBatch>): Promise<Collected> {
  const batches: ScanBatch[] = [];
  for await (const batch of iterable) batches.push(batch);
  return {
    batches,
    hashes: batches.flatMap((b) => [...b.hashes]),
    zero: batches.flatMap((b) => [...b.zero]),
    changed: batches.flatMap((b) => [...b.changed]),
    chunks: batches.flatMap((b) => b.chunks),
    bytesRead: batches.reduce((n, b) => n + b.bytesRead, 0),
  };
}

function blockBytes(index: number): Buffer {
  return image.subarray(index * blockSize, (index + 1) * blockSize);
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function threads(): number {
  return readdirSync('/proc/self/task').length;
}

beforeAll(async () => {
  dir = await tempDir('blockrep-scan-');
  rawPath = join(dir, 'disk.raw');
  qcow2Path = join(dir, 'disk.qcow2');
  image = await writeRawImage(rawPath, regions);
  convertToQcow2(rawPath, qcow2Path);
  const splitDir = join(dir, 'split');
  await mkdir(splitDir);
  reference = await xxhsumBlockHashes(rawPath, blockSize, splitDir);
});

const blocks = () => Math.ceil(image.length / blockSize);
const zeroBlocksExpected = () =>
  Array.from({ length: blocks() }, (_, b) => (image.subarray(b * blockSize, (b + 1) * blockSize).every((x) => x === 0) ? 1 : 0));

// Small images are scanned entirely on the main thread while the workers start; the worker
// variants turn that off so the workers do all the work.
const workersOnly = { scanWhileWorkersStart: false };

describe.each([
  { name: 'raw, defaults', format: 'raw' as const, workers: undefined, tuning: {} },
  { name: 'raw, 2 workers only', format: 'raw' as const, workers: undefined, tuning: workersOnly },
  { name: 'raw, 1 worker only', format: 'raw' as const, workers: 1, tuning: workersOnly },
  { name: 'raw, in-thread', format: 'raw' as const, workers: 0, tuning: {} },
  { name: 'qcow2, 2 workers only', format: 'qcow2' as const, workers: undefined, tuning: workersOnly },
  { name: 'qcow2, in-thread', format: 'qcow2' as const, workers: 0, tuning: {} },
])('scanImage ($name)', ({ format, workers, tuning }) => {
  const options = (extra: Partial<ScanOptions> = {}): ScanOptions => ({
    image: { path: format === 'raw' ? rawPath : qcow2Path, format },
    blockSize,
    ...(workers !== undefined ? { workers } : {}),
    ...extra,
  });
  const scanImage = (opts: ScanOptions) => scanImageTuned(opts, tuning);

  it('hashes every block as xxhsum does, yields contiguous batches, flags zeros', async () => {
    const got = await collect(scanImage(options()));
    expect(got.hashes).toEqual(reference);
    expect(got.hashes).toHaveLength(blocks());
    let next = 0;
    for (const batch of got.batches) {
      expect(batch.startBlock).toBe(next);
      expect(batch.hashes).toHaveLength(batch.count);
      next += batch.count;
    }
    expect(next).toBe(blocks());
    expect(got.batches.length).toBeGreaterThan(1);
    expect(got.zero).toEqual(zeroBlocksExpected());
    // The short last block is hashed over its real length.
    expect(image.length % blockSize).toBe(8 * KiB + 512);
    const api = await xxhash();
    expect(got.hashes.at(-1)).toBe(api.h64Raw(blockBytes(blocks() - 1)));
  });

  it('encodes every changed non-zero block, decoding to its exact bytes', async () => {
    const got = await collect(scanImage(options()));
    expect(got.changed.every((c) => c === 1)).toBe(true);
    expect(got.chunks.map((c) => c.index)).toEqual(got.zero.flatMap((z, b) => (z ? [] : [b])));
    for (const { index, chunk } of got.chunks) {
      expect(decodeChunk(chunk.blob, chunk.id).equals(blockBytes(index)), `block ${index}`).toBe(true);
    }
  });

  it('compares with the parent: only differing blocks are changed, only non-zero ones encoded', async () => {
    const parent = BigUint64Array.from(reference);
    const differ = [0, 9, blocks() - 1];
    for (const b of differ) parent[b] = parent[b]! ^ 1n;
    const calls: Array<[number, number]> = [];
    const got = await collect(
      scanImage(
        options({
          parentHashes: async (start, count) => {
            calls.push([start, count]);
            return parent.subarray(start, start + count); // a view: must be neither kept nor detached
          },
          compress: false,
        }),
      ),
    );
    expect(got.changed.flatMap((c, b) => (c ? [b] : []))).toEqual(differ);
    expect(got.zero[9]).toBe(1);
    expect(got.chunks.map((c) => c.index)).toEqual([0, blocks() - 1]);
    for (const { index, chunk } of got.chunks) expect(decodeChunk(chunk.blob, chunk.id).equals(blockBytes(index))).toBe(true);
    // asked once per batch, in order
    expect(calls).toEqual(got.batches.map((b) => [b.startBlock, b.count]));
    expect(parent.length).toBe(blocks()); // the caller's array was not transferred away
  });
});

describe('scanImage hand-over from the main thread to the workers', () => {
  it('gives the same batches whoever scans each segment', async () => {
    const path = join(dir, 'larger.raw');
    const bytes = await writeRawImage(path, [
      { kind: 'random', bytes: 40 * MiB, seed: 21 },
      { kind: 'zeros', bytes: 8 * MiB },
      { kind: 'random', bytes: 16 * MiB + 4096, seed: 22 },
    ]);
    const api = await xxhash();
    const expected: bigint[] = [];
    for (let at = 0; at < bytes.length; at += MiB) expected.push(api.h64Raw(bytes.subarray(at, at + MiB)));
    for (const tuning of [{}, workersOnly, { denseSegmentBytes: MiB }]) {
      const got = await collect(scanImageTuned({ image: { path }, blockSize: MiB, compress: false }, tuning));
      expect(got.hashes, JSON.stringify(tuning)).toEqual(expected);
      expect(got.zero.filter((z) => z === 1)).toHaveLength(8);
      expect(got.chunks).toHaveLength(expected.length - 8);
    }
  });
});

describe('scanImage zero extents', () => {
  it('does not read regions a qcow2 image leaves unallocated', async () => {
    const got = await collect(scanImage({ image: { path: qcow2Path }, blockSize }));
    const zeroBlocks = got.zero.filter((z) => z === 1).length;
    expect(zeroBlocks).toBeGreaterThanOrEqual(12); // 2 MiB hole + 1 MiB zeros
    expect(got.bytesRead).toBeLessThanOrEqual(image.length - 2 * MiB);
    expect(got.hashes).toEqual(reference);
    expect(got.hashes[9]).toBe(await zeroBlockHash(blockSize));
  });
});

describe('scanImage failures', () => {
  it('rejects a block size that is not a power of two from 4 KiB to 16 MiB', async () => {
    for (const size of [1000, 2048, 32 * MiB, 3 * 4096]) {
      await expect(collect(scanImage({ image: { path: rawPath }, blockSize: size }))).rejects.toMatchObject({ code: 'INVALID_SIZE' });
    }
  });

  it('reports a missing image with the reader’s code', async () => {
    await expect(collect(scanImage({ image: { path: join(dir, 'nope.raw') }, blockSize }))).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
    });
  });

  it('rethrows a reader error raised in a worker as a BlockrepError with the same code', async () => {
    const path = join(dir, 'damaged.qcow2');
    await copyFile(qcow2Path, path);
    // In the last segment: the main thread opens the image fine, a worker meets the damage.
    await corruptQcow2L2Entry(path, 8 * MiB + 64 * KiB);
    for (const workers of [2, 1, 0]) {
      const seen: number[] = [];
      const error = await (async () => {
        for await (const batch of scanImageTuned({ image: { path }, blockSize, workers }, workersOnly)) seen.push(batch.startBlock);
      })().catch((err: unknown) => err);
      expect(error, `workers: ${workers}`).toBeInstanceOf(BlockrepError);
      expect(error).toMatchObject({ code: 'IMAGE_CORRUPT', details: { path } });
      expect((error as Error).message).toContain('past the end of the file');
      // Batches before the damaged block may or may not come first (a worker's error stops
      // the scan at once); the damaged one never does.
      const damagedBlock = (8 * MiB + 64 * KiB) / blockSize;
      for (const start of seen) expect(start).toBeLessThan(damagedBlock);
    }
  });

  it('rejects parent hashes of the wrong length', async () => {
    const scan = scanImage({ image: { path: rawPath }, blockSize, parentHashes: async () => new BigUint64Array(1) });
    await expect(collect(scan)).rejects.toMatchObject({ code: 'INTERNAL' });
  });

  it('stops on abort, closing every worker and its reader', async () => {
    await collect(scanImage({ image: { path: rawPath }, blockSize })); // warm up the thread pool
    const fds = openFds();
    const before = threads();
    const controller = new AbortController();
    const seen: number[] = [];
    const error = await (async () => {
      for await (const batch of scanImageTuned({ image: { path: rawPath }, blockSize, signal: controller.signal }, workersOnly)) {
        seen.push(batch.startBlock);
        controller.abort();
      }
    })().catch((err: unknown) => err);
    expect(error).toMatchObject({ name: 'AbortError' });
    expect(seen).toEqual([0]);
    expect(openFds()).toBe(fds);
    expect(threads()).toBeLessThanOrEqual(before);
  });

  it('closes the workers when the consumer stops early', async () => {
    const fds = openFds();
    const before = threads();
    for await (const batch of scanImageTuned({ image: { path: rawPath }, blockSize }, workersOnly)) {
      expect(batch.startBlock).toBe(0);
      break;
    }
    expect(openFds()).toBe(fds);
    expect(threads()).toBeLessThanOrEqual(before);
  });

  it('fails, without hanging, when a worker dies', async () => {
    const scan = scanImageTuned(
      { image: { path: rawPath }, blockSize },
      { ...workersOnly, workerUrl: new URL('./fixtures/dying-worker.mjs', import.meta.url) },
    );
    const error = await collect(scan).catch((err: unknown) => err);
    expect(error).toMatchObject({ code: 'INTERNAL' });
    expect((error as Error).message).toMatch(/exited unexpectedly \(exit code 3\)/);
  });

  it('terminates a worker that does not answer after an abort', async () => {
    const before = threads();
    const controller = new AbortController();
    const scan = scanImageTuned(
      { image: { path: rawPath }, blockSize, signal: controller.signal },
      { ...workersOnly, workerUrl: new URL('./fixtures/stuck-worker.mjs', import.meta.url) },
    );
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    await expect(collect(scan)).rejects.toMatchObject({ name: 'AbortError' });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(threads()).toBeLessThanOrEqual(before);
  });
});
