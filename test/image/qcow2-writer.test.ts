import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { Qcow2Writer } from '../../src/image/qcow2-writer.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'blockrep-qcow2-writer-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let counter = 0;
function imagePath(name: string): string {
  counter += 1;
  return join(dir, `${counter}-${name}.qcow2`);
}

interface CheckResult {
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'image-end-offset'?: number;
}

async function qemuCheck(path: string): Promise<CheckResult> {
  // qemu-img check exits non-zero when it finds problems; keep its JSON either way.
  try {
    const { stdout } = await run('qemu-img', ['check', '-f', 'qcow2', '--output=json', path]);
    return JSON.parse(stdout) as CheckResult;
  } catch (err) {
    const stdout = (err as { stdout?: string }).stdout;
    if (stdout) return JSON.parse(stdout) as CheckResult;
    throw err;
  }
}

async function expectCleanCheck(path: string): Promise<void> {
  const check = await qemuCheck(path);
  expect(check['check-errors']).toBe(0);
  expect(check.corruptions ?? 0).toBe(0);
  expect(check.leaks ?? 0).toBe(0);
  expect(check['image-end-offset']).toBe((await stat(path)).size);
}

async function qemuInfo(path: string): Promise<Record<string, unknown>> {
  const { stdout } = await run('qemu-img', ['info', '-f', 'qcow2', '--output=json', path]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

async function qemuMap(path: string): Promise<MapEntry[]> {
  const { stdout } = await run('qemu-img', ['map', '-f', 'qcow2', '--output=json', path], { maxBuffer: 64 * MiB });
  return JSON.parse(stdout) as MapEntry[];
}

/** Guest ranges qemu reports as stored data, merged. */
async function dataRanges(path: string): Promise<Array<[number, number]>> {
  const ranges: Array<[number, number]> = [];
  for (const e of await qemuMap(path)) {
    if (!e.data) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === e.start) last[1] = e.start + e.length;
    else ranges.push([e.start, e.start + e.length]);
  }
  return ranges;
}

async function convertToRaw(path: string): Promise<Buffer> {
  const raw = `${path}.raw`;
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, raw]);
  try {
    return await readFile(raw);
  } finally {
    await rm(raw, { force: true });
  }
}

/** Small deterministic PRNG so a failing layout can be reproduced from its seed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Write {
  offset: number;
  data: Buffer;
}

/**
 * Scattered writes over [0, virtualSize): gaps, single clusters, multi-cluster runs, all-zero
 * clusters (alone and inside runs), half-zero clusters, and a final partial block that ends at
 * the virtual size.
 */
function scatteredWrites(virtualSize: number, clusterSize: number, seed: number): Write[] {
  const rnd = prng(seed);
  const tailCluster = Math.ceil(virtualSize / clusterSize) - 1;
  const writes: Write[] = [
    { offset: 0, data: Buffer.alloc(clusterSize) }, // a lone all-zero cluster
    { offset: clusterSize, data: randomBytes(clusterSize) },
  ];
  let c = 3;
  while (c < tailCluster) {
    const r = rnd();
    if (r < 0.3) {
      c += 1 + Math.floor(rnd() * 3); // gap
      continue;
    }
    const run = Math.min(tailCluster - c, r < 0.8 ? 1 : 2 + Math.floor(rnd() * 5));
    const data = randomBytes(run * clusterSize);
    for (let i = 0; i < run; i++) {
      const at = i * clusterSize;
      const kind = rnd();
      if (kind < 0.15) data.fill(0, at, at + clusterSize); // all-zero cluster inside a run
      else if (kind < 0.25) data.fill(0, at, at + clusterSize / 2); // half zero: must be stored
    }
    writes.push({ offset: c * clusterSize, data });
    c += run;
  }
  const tailOffset = tailCluster * clusterSize;
  writes.push({ offset: tailOffset, data: randomBytes(virtualSize - tailOffset) }); // ends at virtualSize
  return writes;
}

async function writeImage(path: string, virtualSize: number, clusterSize: number | undefined, writes: Write[]): Promise<void> {
  const writer = await Qcow2Writer.create(path, virtualSize, clusterSize === undefined ? {} : { clusterSize });
  for (const w of writes) await writer.write(w.offset, w.data);
  await writer.finish();
}

function expectedRaw(virtualSize: number, writes: Write[]): Buffer {
  const raw = Buffer.alloc(virtualSize);
  for (const w of writes) w.data.copy(raw, w.offset);
  return raw;
}

/** Guest clusters that hold a non-zero byte, merged into ranges. */
function nonZeroRanges(virtualSize: number, clusterSize: number, raw: Buffer): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  for (let off = 0; off < virtualSize; off += clusterSize) {
    const end = Math.min(off + clusterSize, virtualSize);
    if (raw.subarray(off, end).every((b) => b === 0)) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === off) last[1] = end;
    else ranges.push([off, end]);
  }
  return ranges;
}

async function expectRejected(p: Promise<unknown>, code: string): Promise<BlockrepError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockrepError);
  expect((err as BlockrepError).code).toBe(code);
  return err as BlockrepError;
}

describe('Qcow2Writer', () => {
  const cases = [
    { clusterSize: 4 * KiB, clusters: 1300, tail: 1536, seed: 1 }, // spans three L2 tables
    { clusterSize: 64 * KiB, clusters: 60, tail: 1234, seed: 2 }, // not even whole sectors
    { clusterSize: 2 * MiB, clusters: 14, tail: 5 * 512, seed: 3 },
  ];
  for (const { clusterSize, clusters, tail, seed } of cases) {
    it(`writes scattered clusters that qemu reads back (cluster ${clusterSize / KiB} KiB)`, async () => {
      const virtualSize = clusters * clusterSize + tail; // not a multiple of the cluster size
      const sectorSize = Math.ceil(virtualSize / 512) * 512; // QEMU counts whole sectors
      const writes = scatteredWrites(virtualSize, clusterSize, seed);
      const path = imagePath(`scattered-${clusterSize}`);
      await writeImage(path, virtualSize, clusterSize, writes);

      await expectCleanCheck(path);
      const info = await qemuInfo(path);
      expect(info['virtual-size']).toBe(sectorSize);
      expect(info['cluster-size']).toBe(clusterSize);
      const specific = (info['format-specific'] as { data: Record<string, unknown> }).data;
      expect(specific['compat']).toBe('1.1');
      expect(specific['refcount-bits']).toBe(16);
      expect(specific['corrupt']).toBe(false);

      const expected = expectedRaw(sectorSize, writes);
      expect((await convertToRaw(path)).equals(expected)).toBe(true);
      // All-zero clusters are left unallocated; everything else is stored.
      expect(await dataRanges(path)).toEqual(nonZeroRanges(sectorSize, clusterSize, expected));
      expect(await readdir(dir)).not.toContain(expect.stringContaining('.tmp-'));
    });
  }

  it('splits one big write across L2 tables and writes runs larger than its buffer directly', async () => {
    const clusterSize = 4 * KiB; // one L2 table maps 2 MiB
    const virtualSize = 40 * MiB + 512;
    const big = randomBytes(20 * MiB); // > 8 MiB append buffer, crosses ten L2 tables
    big.fill(0, 5 * MiB, 5 * MiB + 3 * clusterSize); // zero clusters inside the run
    const writes: Write[] = [
      { offset: 12 * KiB, data: randomBytes(8 * KiB) },
      { offset: 1 * MiB + 4 * KiB, data: big },
      { offset: 40 * MiB, data: randomBytes(512) },
    ];
    const path = imagePath('big-run');
    await writeImage(path, virtualSize, clusterSize, writes);
    await expectCleanCheck(path);
    const expected = expectedRaw(virtualSize, writes);
    expect((await convertToRaw(path)).equals(expected)).toBe(true);
    expect(await dataRanges(path)).toEqual(nonZeroRanges(virtualSize, clusterSize, expected));
  });

  it('coalesces consecutive small writes into few large file writes', async () => {
    const clusterSize = 64 * KiB;
    const virtualSize = 8 * MiB;
    const path = imagePath('coalesce');
    const writer = await Qcow2Writer.create(path, virtualSize);
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { write: (...args: unknown[]) => unknown };
    await probe.close();
    const spy = vi.spyOn(proto, 'write');
    try {
      const writes: Write[] = [];
      for (let off = 0; off < virtualSize; off += clusterSize) writes.push({ offset: off, data: randomBytes(clusterSize) });
      for (const w of writes) await writer.write(w.offset, w.data);
      const duringWrites = spy.mock.calls.length;
      await writer.finish();
      // 128 data clusters + 1 L2 table fit in the buffer: at most one write while streaming, and
      // a handful at finish (data + L2 + refcounts, L1, header).
      expect(duringWrites).toBeLessThanOrEqual(1);
      expect(spy.mock.calls.length).toBeLessThanOrEqual(5);
      await expectCleanCheck(path);
      expect((await convertToRaw(path)).equals(expectedRaw(virtualSize, writes))).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });

  it('writes a sparse 1 TiB image quickly and with little memory', async () => {
    const clusterSize = 64 * KiB;
    const virtualSize = TiB;
    const writes: Write[] = [
      { offset: 0, data: randomBytes(clusterSize) },
      { offset: 3 * GiB + 5 * clusterSize, data: randomBytes(3 * clusterSize) },
      { offset: 300 * GiB, data: randomBytes(clusterSize) },
      { offset: 777 * GiB + 17 * clusterSize, data: Buffer.alloc(2 * clusterSize) }, // zeros: stays a hole
      { offset: 1000 * GiB + clusterSize, data: randomBytes(2 * clusterSize) },
      { offset: virtualSize - clusterSize, data: randomBytes(clusterSize) },
    ];
    const path = imagePath('sparse-1t');
    const started = Date.now();
    const before = process.memoryUsage().arrayBuffers;
    const writer = await Qcow2Writer.create(path, virtualSize);
    for (const w of writes) await writer.write(w.offset, w.data);
    const grown = process.memoryUsage().arrayBuffers - before;
    await writer.finish();
    expect(Date.now() - started).toBeLessThan(2000);
    // L1 (one cluster), one L2, one zero cluster and the 8 MiB append buffer.
    expect(grown).toBeLessThan(12 * MiB);

    // Header, L1, 4 data runs with their L2 tables (5 tables), refcount block and table.
    expect((await stat(path)).size).toBe((1 + 1 + 8 + 5 + 1 + 1) * clusterSize);
    await expectCleanCheck(path);
    expect(await dataRanges(path)).toEqual(
      writes.filter((w) => w.data.some((b) => b !== 0)).map((w): [number, number] => [w.offset, w.offset + w.data.length]),
    );

    // Same data in a sparse 1 TiB raw file; qemu-img compare skips the holes on both sides.
    const rawPath = `${path}.raw`;
    const raw = await open(rawPath, 'w');
    try {
      await raw.truncate(virtualSize);
      for (const w of writes) await raw.write(w.data, 0, w.data.length, w.offset);
    } finally {
      await raw.close();
    }
    const { stdout } = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, rawPath]);
    expect(stdout).toContain('Images are identical');
    await rm(rawPath);
  });

  it('writes an image of zeros as metadata only, and an empty image', async () => {
    const zeros = imagePath('zeros');
    await writeImage(zeros, 10 * MiB, undefined, [{ offset: 0, data: Buffer.alloc(10 * MiB) }]);
    await expectCleanCheck(zeros);
    expect((await stat(zeros)).size).toBe(4 * 64 * KiB); // header, L1, refcount block, refcount table
    expect(await dataRanges(zeros)).toEqual([]);
    expect((await convertToRaw(zeros)).equals(Buffer.alloc(10 * MiB))).toBe(true);

    const empty = imagePath('empty');
    await writeImage(empty, 0, undefined, []);
    await expectCleanCheck(empty);
    expect((await qemuInfo(empty))['virtual-size']).toBe(0);
  });

  it('refuses writes out of order, misaligned or past the end, and stays usable', async () => {
    const cs = 4 * KiB;
    const virtualSize = 10 * cs + 100;
    const path = imagePath('validation');
    const writer = await Qcow2Writer.create(path, virtualSize, { clusterSize: cs });
    const data = randomBytes(cs);
    await writer.write(2 * cs, data);
    await expectRejected(writer.write(2 * cs, data), 'INTERNAL'); // same offset again
    await expectRejected(writer.write(cs, data), 'INTERNAL'); // descending
    await expectRejected(writer.write(3 * cs + 512, data), 'INTERNAL'); // misaligned offset
    await expectRejected(writer.write(3 * cs, data.subarray(0, 100)), 'INTERNAL'); // short, not at the end
    await expectRejected(writer.write(10 * cs, randomBytes(cs)), 'INTERNAL'); // past the end
    await expectRejected(writer.write(-cs, data), 'INTERNAL');
    const first = writer.write(3 * cs, data);
    await expectRejected(writer.write(4 * cs, data), 'INTERNAL'); // overlapping call
    await first;
    await writer.write(10 * cs, randomBytes(100)); // final partial block
    await writer.finish();
    await expectRejected(writer.write(11 * cs, data), 'INTERNAL');
    await expectRejected(writer.finish(), 'INTERNAL');
    await writer.abort(); // no-op after finish
    await expectCleanCheck(path);

    await expectRejected(Qcow2Writer.create(imagePath('bad-cluster'), MiB, { clusterSize: 3000 }), 'INTERNAL');
    await expectRejected(Qcow2Writer.create(imagePath('bad-cluster'), MiB, { clusterSize: 4 * MiB }), 'INTERNAL');
    await expectRejected(Qcow2Writer.create(imagePath('bad-size'), -1), 'INTERNAL');
    // 512-byte clusters map 32 KiB per L2 table: 1 PiB would need a 256 GiB L1.
    await expectRejected(Qcow2Writer.create(imagePath('too-big'), 1024 * TiB, { clusterSize: 512 }), 'RESTORE_TARGET');
  });

  it('never shows a complete-looking file before finish, and abort leaves nothing', async () => {
    const sub = join(dir, 'abort');
    await mkdir(sub);
    const path = join(sub, 'disk.qcow2');
    const writer = await Qcow2Writer.create(path, 64 * MiB);
    await writer.write(0, randomBytes(256 * KiB));
    await writer.write(10 * MiB, randomBytes(10 * MiB)); // reaches the file
    const names = await readdir(sub);
    expect(names).toHaveLength(1);
    expect(names[0]).toMatch(/^disk\.qcow2\.tmp-[0-9a-f]+$/);
    const partial = await readFile(join(sub, names[0] ?? ''));
    expect(partial.subarray(0, 4).equals(Buffer.from('QFI\xfb', 'latin1'))).toBe(false);
    await writer.abort();
    expect(await readdir(sub)).toEqual([]);
    await writer.abort(); // idempotent
    await expectRejected(writer.write(20 * MiB, randomBytes(64 * KiB)), 'INTERNAL');
    await expectRejected(writer.finish(), 'INTERNAL');
  });

  it('reports a missing directory as IO', async () => {
    await expectRejected(Qcow2Writer.create(join(dir, 'no', 'such', 'dir', 'x.qcow2'), MiB), 'IO');
  });

  // A real full file system: a 1 MiB tmpfs in a private mount namespace. It needs root or user
  // namespaces; it is skipped only when BLOCKREP_SKIP_PRIVILEGED_TESTS=1 says so.
  it.skipIf(process.env.BLOCKREP_SKIP_PRIVILEGED_TESTS === '1')('turns ENOSPC into NO_SPACE and deletes the partial file', async () => {
    // The child runs the built writer (dist/, built from src/ by the test run's global setup).
    const root = resolve(dirname(new URL(import.meta.url).pathname), '../..');
    const out = join(dir, 'enospc-build');
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'package.json'), '{"type":"module"}');
    const mnt = join(dir, 'enospc-mnt');
    await mkdir(mnt);
    const script = join(out, 'child.js');
    await writeFile(
      script,
      `import { readdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { Qcow2Writer } from '${pathToFileURL(join(root, 'dist/image/index.js')).href}';
const mnt = process.argv[2];
const w = await Qcow2Writer.create(mnt + '/disk.qcow2', 64 * 1024 * 1024);
let code = 'none';
try {
  for (let off = 0; off < 32 * 1024 * 1024; off += 1024 * 1024) await w.write(off, randomBytes(1024 * 1024));
  await w.finish();
} catch (err) { code = err.code; }
await w.abort();
console.log(JSON.stringify({ code, left: await readdir(mnt) }));
`,
    );
    const { stdout } = await run('unshare', [
      '-rm',
      'sh',
      '-c',
      'mount -t tmpfs -o size=1m blockrep-test "$1" && exec "$2" "$3" "$1"',
      'sh',
      mnt,
      process.execPath,
      script,
    ]);
    expect(JSON.parse(stdout)).toEqual({ code: 'NO_SPACE', left: [] });
  });
});
