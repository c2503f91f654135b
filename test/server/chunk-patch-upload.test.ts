import { randomBytes } from 'node:crypto';
import { open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
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
