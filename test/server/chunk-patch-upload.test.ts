import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHUNK_PATCH_TYPE } from '../../src/backend/http/http-protocol.js';
import { decodeChunk, encodeChunk } from '../../src/chunk/chunk-codec.js';
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
});
