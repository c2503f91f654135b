import { randomBytes } from 'node:crypto';
import { open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHUNK_PATCH_TYPE } from '../../src/protocol/http-protocol.js';
import { CODEC_ZSTD, decodeChunk, encodeChunk } from '../../src/chunk/chunk-codec.js';
import { DEFAULT_SLICE_BYTES, encodePatch, sliceHashes } from '../../src/chunk/chunk-patch.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { rawRequest } from '../support/raw-http.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * Chunk patches against a real server: it plans from the base it holds, rebuilds the block and
 * stores it only when it hashes to the chunk id; anything else is refused and stores nothing.
 */
let server: RunningTestServer;
let root: string;
const S = DEFAULT_SLICE_BYTES;
const baseRaw = randomBytes(256 * 1024);
const base = encodeChunk(baseRaw);
const path = (id: string) => `/v1/objects/chunks/${id.slice(0, 2)}/${id}`;
const chunkFiles = async () => (await readdir(join(root, 'repo', 'chunks'), { recursive: true })).filter((f) => /[0-9a-f]{64}$/.test(String(f)));

beforeAll(async () => {
  root = await tempDir();
  server = await startServer({ root: join(root, 'repo') });
  expect((await rawRequest(server.url, 'PUT', path(base.id), { body: base.blob })).status).toBe(201);
});

afterAll(async () => {
  await server.stop();
});

function changed(): Buffer {
  const raw = Buffer.from(baseRaw);
  raw.write('a small change', 3 * S + 100);
  raw.write('another one', 9 * S - 2); // straddles slices 8 and 9
  return raw;
}

describe('chunk patches', () => {
  it('plans only the slices that differ, and rebuilds the block from a patch of those', async () => {
    const raw = changed();
    const plan = await rawRequest(server.url, 'POST', '/v1/patch-plans', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ sliceBytes: S, items: [{ base: base.id, hashes: sliceHashes(raw, S).toString('base64') }, { base: '0'.repeat(64), hashes: sliceHashes(raw, S).toString('base64') }] }),
    });
    expect(plan.status).toBe(200);
    const bitmap = Buffer.from(plan.json.items[0], 'base64');
    const slices = [...Array(16).keys()].filter((i) => (bitmap[i >> 3]! >> (i & 7)) & 1);
    expect(slices).toEqual([3, 8, 9]);
    expect(plan.json.items[1]).toBeNull(); // no such base here

    const id = encodeChunk(raw).id;
    const patch = encodePatch(raw, S, base.id, bitmap);
    expect(patch.length).toBeLessThan(3 * S + 200);
    const put = await rawRequest(server.url, 'PUT', path(id), { body: patch, headers: { 'content-type': CHUNK_PATCH_TYPE } });
    expect(put.status).toBe(201);
    const stored = await rawRequest(server.url, 'GET', path(id));
    expect(stored.status).toBe(200);
    // What the server stored decodes (and re-hashes) to the exact new block.
    expect(decodeChunk(stored.body, id).equals(raw)).toBe(true);
  });

  it('bounds the work of a plan: a small plan naming large compressible bases over and over decodes each once, within a bound', async () => {
    // 8 bases of 16 MiB that compress to almost nothing; 1,024 items cycling over them: ~100 KB
    // of plan that asked for 16 GiB of decompression and hashing before.
    const bases = Array.from({ length: 8 }, (_, i) => encodeChunk(Buffer.alloc(16 * 1024 * 1024, i + 1)));
    for (const b of bases) expect((await rawRequest(server.url, 'PUT', path(b.id), { body: b.blob })).status).toBe(201);
    const big = 16 * 1024 * 1024;
    const hashes = Array.from({ length: 8 }, (_, b) => sliceHashes(Buffer.alloc(big, b === 0 ? 9 : b + 1), big).toString('base64'));
    const items = Array.from({ length: 1024 }, (_, i) => ({ base: bases[i % 8]!.id, hashes: hashes[i % 8]! }));
    const body = JSON.stringify({ sliceBytes: big, items });
    expect(body.length).toBeLessThan(120_000);
    const started = performance.now();
    const plan = rawRequest(server.url, 'POST', '/v1/patch-plans', { headers: { 'content-type': 'application/json' }, body });
    // The event loop keeps answering meanwhile.
    await new Promise((r) => setTimeout(r, 200));
    const t = performance.now();
    expect((await rawRequest(server.url, 'GET', '/v1/config')).status).toBe(200);
    expect(performance.now() - t).toBeLessThan(2000);
    const res = await plan;
    expect(res.status).toBe(200);
    expect(performance.now() - started).toBeLessThan(10_000); // ~25 s of CPU before, on a quiet machine
    // 64 MiB of bases per plan: the first four are planned (slice 0 differs for base 0, not for
    // the others), the items of the rest get no plan and are sent whole.
    expect(res.json.items.slice(0, 8)).toEqual(['AQ==', 'AA==', 'AA==', 'AA==', null, null, null, null]);
    expect(res.json.items.filter((x: string | null) => x !== null)).toHaveLength(512);
  }, 120_000);

  it('refuses a patch whose result does not hash to its id, or whose base is missing, storing nothing', async () => {
    const before = await chunkFiles();
    const raw = changed();
    raw[0]! ^= 1; // a change the bitmap does not carry: the rebuilt block differs
    const bitmap = Buffer.from([0b1000, 0b11]);
    const lying = encodePatch(raw, S, base.id, bitmap);
    const wrong = await rawRequest(server.url, 'PUT', path(encodeChunk(raw).id), { body: lying, headers: { 'content-type': CHUNK_PATCH_TYPE } });
    expect(wrong.status).toBe(422);
    expect(wrong.json.code).toBe('CHUNK_CORRUPT');

    const orphan = encodePatch(raw, S, 'ab'.repeat(32), bitmap);
    const noBase = await rawRequest(server.url, 'PUT', path(encodeChunk(raw).id), { body: orphan, headers: { 'content-type': CHUNK_PATCH_TYPE } });
    expect(noBase.status).toBe(400);
    const garbage = await rawRequest(server.url, 'PUT', path(encodeChunk(raw).id), { body: Buffer.from('not a patch'), headers: { 'content-type': CHUNK_PATCH_TYPE } });
    expect(garbage.status).toBe(400);
    expect(await chunkFiles()).toEqual(before);
  });

  it('builds from the base it planned with even if that file is damaged or removed afterwards, and stores only a verified block', async () => {
    const fileOf = (id: string) => join(root, 'repo', 'chunks', id.slice(0, 2), id);
    const damage = async (id: string) => {
      const fh = await open(fileOf(id), 'r+');
      await fh.write(Buffer.from('damaged'), 0, 7, 4000);
      await fh.close();
    };
    const plan = async (raw: Buffer, baseId: string) => {
      const r = await rawRequest(server.url, 'POST', '/v1/patch-plans', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sliceBytes: S, items: [{ base: baseId, hashes: sliceHashes(raw, S).toString('base64') }] }),
      });
      expect(r.status).toBe(200);
      return Buffer.from(r.json.items[0], 'base64');
    };
    const putPatch = (raw: Buffer, baseId: string, bitmap: Buffer) =>
      rawRequest(server.url, 'PUT', path(encodeChunk(raw).id), { body: encodePatch(raw, S, baseId, bitmap), headers: { 'content-type': CHUNK_PATCH_TYPE } });
    const storedOf = async (raw: Buffer) => {
      const id = encodeChunk(raw).id;
      const r = await rawRequest(server.url, 'GET', path(id));
      expect(r.status).toBe(200);
      expect(decodeChunk(r.body, id).equals(raw)).toBe(true); // re-hashed: the exact new block
      return r.body;
    };
    const stored = async (b: { id: string; blob: Uint8Array }) => expect((await rawRequest(server.url, 'PUT', path(b.id), { body: b.blob })).status).toBe(201);

    // Random content (stored uncompressed), damaged on disk between plan and patch.
    const randomBase = randomBytes(256 * 1024);
    const r1 = encodeChunk(randomBase);
    await stored(r1);
    const new1 = Buffer.from(randomBase);
    randomBytes(100).copy(new1, 5 * S + 7);
    const bitmap1 = await plan(new1, r1.id);
    await damage(r1.id);
    expect((await putPatch(new1, r1.id, bitmap1)).status).toBe(201);
    await storedOf(new1);

    // Compressible content, removed between plan and patch; the new block is still compressed.
    const textBase = Buffer.from('blockrep keeps every version of every block. '.repeat(6000)).subarray(0, 256 * 1024);
    const t1 = encodeChunk(textBase);
    await stored(t1);
    const new2 = Buffer.from(textBase);
    new2.write('a new sentence in the middle', 7 * S + 3);
    const bitmap2 = await plan(new2, t1.id);
    await rm(fileOf(t1.id));
    expect((await putPatch(new2, t1.id, bitmap2)).status).toBe(201);
    const blob2 = await storedOf(new2);
    expect(blob2.readUInt8(5)).toBe(CODEC_ZSTD);

    // A damaged base no plan has read: the server reads and checks it, refuses, stores nothing.
    const r3 = encodeChunk(randomBytes(256 * 1024));
    await stored(r3);
    await damage(r3.id);
    const before = await chunkFiles();
    const new3 = Buffer.from(decodeChunk(r3.blob, r3.id));
    new3.write('changed', 2 * S);
    const refused = await putPatch(new3, r3.id, Buffer.from([0b100, 0]));
    expect(refused.status).toBe(422);
    expect(refused.json.code).toBe('CHUNK_CORRUPT');
    expect(await chunkFiles()).toEqual(before);
  });
});
