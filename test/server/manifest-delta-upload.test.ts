import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_DELTA_TYPE } from '../../src/protocol/http-protocol.js';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import { encodeDelta } from '../../src/manifest/manifest-delta.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { rawRequest } from '../support/raw-http.js';
import { tempDir } from '../support/temp-dir.js';
import { disposeTestManifests, testManifest, testManifestBytes } from '../support/test-manifests.js';

/**
 * Manifest deltas against a real server: the server composes the new manifest from the parent
 * it holds, and stores it only when the result matches the client's digest and every chunk it
 * names is present.
 */
let server: RunningTestServer;
let root: string;
const V1 = '20261126T000000.000Z-000001';
const V2 = '20261127T000000.000Z-000002';
const a = encodeChunk(Buffer.alloc(4096, 1));
const b = encodeChunk(Buffer.alloc(4096, 2));
const missing = encodeChunk(Buffer.alloc(4096, 3));
const key = (v: string) => `/v1/objects/disks/vm%252Fvda/${v}.manifest`;

beforeAll(async () => {
  root = await tempDir();
  server = await startServer({ root: join(root, 'repo') });
  for (const c of [a, b]) {
    const r = await rawRequest(server.url, 'PUT', `/v1/objects/chunks/${c.id.slice(0, 2)}/${c.id}`, { body: c.blob });
    expect(r.status).toBe(201);
  }
  const parent = await testManifestBytes('vm/vda', V1, [a.id, a.id, undefined, a.id]);
  expect((await rawRequest(server.url, 'PUT', key(V1), { body: parent, headers: { 'if-none-match': '*' } })).status).toBe(201);
});

afterAll(async () => {
  await server.stop();
  await disposeTestManifests();
});

/** The delta of a child of V1 whose block 1 is `id`, as a client would send it. */
async function deltaFor(id: string, parentId = V1): Promise<Buffer> {
  const child = await testManifest('vm/vda', V2, [a.id, id, undefined, a.id], parentId);
  const bytes: Buffer[] = [];
  for await (const p of child.stream()) bytes.push(Buffer.from(p));
  const whole = Buffer.concat(bytes);
  const headerBytes = whole.readUInt32BE(8);
  const entry = whole.subarray(headerBytes + 40, headerBytes + 80);
  return encodeDelta(whole.subarray(0, headerBytes), child.digest, [{ index: 1, entry }]);
}

const put = (body: Buffer) => rawRequest(server.url, 'PUT', key(V2), { body, headers: { 'content-type': MANIFEST_DELTA_TYPE, 'if-none-match': '*' } });
const versions = async () => readdir(join(root, 'repo', 'disks', 'vm%2Fvda'));

describe('manifest delta upload', () => {
  it('refuses a delta naming a chunk the repository lacks, a damaged delta and a missing parent, storing nothing', async () => {
    const noChunk = await put(await deltaFor(missing.id));
    expect(noChunk.status).toBe(409);
    expect(noChunk.json).toMatchObject({ code: 'CHUNK_MISSING' });

    const good = await deltaFor(b.id);
    const damaged = Buffer.from(good);
    damaged[damaged.length - 1]! ^= 1; // the entry no longer matches the digest
    expect((await put(damaged)).json).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await put(good.subarray(0, good.length - 3))).status).toBe(400);

    const orphan = await put(await deltaFor(b.id, '20200101T000000.000Z-000000'));
    expect(orphan.status).toBe(400);
    expect(orphan.json.message).toMatch(/parent version .* does not exist/);
    expect(await versions()).toEqual([`${V1}.manifest`]);
  });

  it('composes and stores a good delta, exactly once', async () => {
    const good = await deltaFor(b.id);
    expect((await put(good)).status).toBe(201);
    const stored = await rawRequest(server.url, 'GET', key(V2));
    // The stored manifest is the one the client digested (the delta carries that digest).
    expect(stored.body.subarray(stored.body.length - 32).equals(good.subarray(20, 52))).toBe(true);
    const headerBytes = stored.body.readUInt32BE(8);
    expect(stored.body.toString('hex', headerBytes + 48, headerBytes + 80)).toBe(b.id);
    expect((await put(good)).status).toBe(412);
    expect((await versions()).sort()).toEqual([`${V1}.manifest`, `${V2}.manifest`]);
  });

  it("checks only the delta's own chunks: the parent's are those of the published parent", async () => {
    // Another disk, so the shared chunks above stay in place.
    const disk = (v: string) => `/v1/objects/disks/vm%252Fvdb/${v}.manifest`;
    const only = encodeChunk(Buffer.alloc(4096, 4));
    const fresh = encodeChunk(Buffer.alloc(4096, 5));
    for (const c of [only, fresh]) expect((await rawRequest(server.url, 'PUT', `/v1/objects/chunks/${c.id.slice(0, 2)}/${c.id}`, { body: c.blob })).status).toBe(201);
    const parent = await testManifestBytes('vm/vdb', V1, [only.id, only.id, only.id, only.id]);
    expect((await rawRequest(server.url, 'PUT', disk(V1), { body: parent, headers: { 'if-none-match': '*' } })).status).toBe(201);
    const deltaOf = async (id: string): Promise<Buffer> => {
      const child = await testManifest('vm/vdb', V2, [only.id, id, only.id, only.id], V1);
      const bytes: Buffer[] = [];
      for await (const p of child.stream()) bytes.push(Buffer.from(p));
      const whole = Buffer.concat(bytes);
      const headerBytes = whole.readUInt32BE(8);
      return encodeDelta(whole.subarray(0, headerBytes), child.digest, [{ index: 1, entry: whole.subarray(headerBytes + 40, headerBytes + 80) }]);
    };
    const commit = (body: Buffer) => rawRequest(server.url, 'PUT', disk(V2), { body, headers: { 'content-type': MANIFEST_DELTA_TYPE, 'if-none-match': '*' } });
    // The parent's chunk is removed behind the server's back: a commit that looked at every
    // chunk of the composed manifest would refuse the delta; one that checks what changed does not.
    await rm(join(root, 'repo', 'chunks', only.id.slice(0, 2), only.id));
    const lacking = await commit(await deltaOf(missing.id));
    expect(lacking.status).toBe(409);
    expect(lacking.json).toMatchObject({ code: 'CHUNK_MISSING', message: expect.stringContaining(missing.id) });
    expect((await commit(await deltaOf(fresh.id))).status).toBe(201);
    // A manifest sent whole is still checked entry by entry.
    const whole = await testManifestBytes('vm/vdb', '20261128T000000.000Z-000003', [fresh.id, only.id, fresh.id, fresh.id], V2);
    const refused = await rawRequest(server.url, 'PUT', disk('20261128T000000.000Z-000003'), { body: whole, headers: { 'if-none-match': '*' } });
    expect(refused.status).toBe(409);
    expect(refused.json.message).toContain(only.id);
  });
});
