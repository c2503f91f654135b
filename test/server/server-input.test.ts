import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join, relative } from 'node:path';
import { compress } from 'zstd-napi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { CHUNK_HEADER_BYTES, encodeChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { patternBytes } from '../support/qemu-tools.js';
import { rawRequest, type RawResponse } from '../support/raw-http.js';
import { slowRequest } from '../support/slow-http.js';
import { tempDir } from '../support/temp-dir.js';
import { disposeTestManifests, testManifestBytes } from '../support/test-manifests.js';

/**
 * The server trusts nothing a client sends: each bad request gets its status and code, and
 * leaves the repository directory exactly as it was (upload spool included).
 */
let dir: string;
let root: string;
let server: RunningTestServer;
let seed = 1;
const V1 = '20261126T033504.123Z-aaaaaa';

beforeAll(async () => {
  dir = await tempDir('blockrep-server-input-');
  root = join(dir, 'repo');
  server = await startServer({ root });
});
afterAll(async () => {
  await server?.stop();
  await disposeTestManifests();
});

async function files(d = root): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(d, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(relative(root, join(e.parentPath, e.name)));
  }
  return out.sort();
}

const req = (method: string, path: string, options: Parameters<typeof rawRequest>[3] = {}): Promise<RawResponse> => rawRequest(server.url, method, path, options);

function expectRefused(res: RawResponse, status: number, code: string): void {
  expect({ status: res.status, code: res.json?.code }, res.body.toString()).toEqual({ status, code });
  expect(res.headers['x-blockrep-code']).toBe(code);
  expect(typeof res.json.message).toBe('string');
  expect(res.json.message).not.toContain(root); // no server paths leak
}

/** Runs `f` and checks that the repository directory did not change. */
async function storesNothing(f: () => Promise<void>): Promise<void> {
  const before = await files();
  await f();
  expect(await files()).toEqual(before);
}

const objectPath = (key: string): string => `/v1/objects/${key.split('/').map(encodeURIComponent).join('/')}`;

describe('chunks', () => {
  it('refuses a blob whose content does not hash to its key (422 CHUNK_CORRUPT)', async () => {
    const a = encodeChunk(patternBytes(8192, seed++));
    const b = encodeChunk(patternBytes(8192, seed++));
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(Repository.chunkKey(a.id)), { body: b.blob }), 422, 'CHUNK_CORRUPT');
      const flipped = Buffer.from(a.blob);
      flipped[flipped.length - 1]! ^= 0x10;
      expectRefused(await req('PUT', objectPath(Repository.chunkKey(a.id)), { body: flipped }), 422, 'CHUNK_CORRUPT');
      expectRefused(await req('PUT', objectPath(Repository.chunkKey(a.id)), { body: 'not a chunk' }), 422, 'CHUNK_CORRUPT');
    });
  });

  it('refuses a compressed frame that claims more than its header (no decompression bomb)', async () => {
    const bomb = compress(Buffer.alloc(64 * 1024 * 1024));
    const blob = Buffer.alloc(CHUNK_HEADER_BYTES + bomb.length);
    blob.write('BRCK', 0, 'latin1');
    blob.writeUInt8(1, 4);
    blob.writeUInt8(1, 5);
    blob.writeUInt32BE(4096, 8);
    bomb.copy(blob, CHUNK_HEADER_BYTES);
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(Repository.chunkKey('ab'.repeat(32))), { body: blob }), 422, 'CHUNK_CORRUPT');
    });
  });

  it('refuses a body over 16 MiB + header (413), declared or streamed', async () => {
    const big = Buffer.alloc(16 * 1024 * 1024 + CHUNK_HEADER_BYTES + 1);
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(Repository.chunkKey('cd'.repeat(32))), { body: big }), 413, 'TOO_LARGE');
      expectRefused(await req('PUT', objectPath(Repository.chunkKey('cd'.repeat(32))), { body: big, headers: { 'transfer-encoding': 'chunked' } }), 413, 'TOO_LARGE');
    });
  });

  it('stores a good chunk (201) and serves it whole and in ranges', async () => {
    const c = encodeChunk(patternBytes(10_000, seed++));
    const put = await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob });
    expect(put.status).toBe(201);
    const head = await req('HEAD', objectPath(Repository.chunkKey(c.id)));
    expect([head.status, head.headers['content-length']]).toEqual([200, String(c.blob.byteLength)]);
    const range = await req('GET', objectPath(Repository.chunkKey(c.id)), { headers: { range: 'bytes=2-5' } });
    expect([range.status, range.headers['content-range'], range.body.equals(Buffer.from(c.blob).subarray(2, 6))]).toEqual([206, `bytes 2-5/${c.blob.byteLength}`, true]);
    expect((await req('GET', objectPath(Repository.chunkKey(c.id)), { headers: { range: 'bytes=999999-' } })).status).toBe(416);
    expectRefused(await req('GET', objectPath(Repository.chunkKey(c.id)), { headers: { range: 'bytes=0-1,4-5' } }), 400, 'BAD_REQUEST');
    expectRefused(await req('GET', objectPath(Repository.chunkKey(c.id)), { headers: { range: 'bytes=5-2' } }), 400, 'BAD_REQUEST');
  });
});

describe('chunks already stored', () => {
  const fileOf = (id: string): string => join(root, 'chunks', id.slice(0, 2), id);

  it('does not rewrite a chunk it holds whole: same file, touched as a dedup hit; a damaged copy is replaced', async () => {
    const c = encodeChunk(patternBytes(20_000, seed++));
    expect((await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob })).status).toBe(201);
    const old = new Date(Date.now() - 3 * 86_400_000);
    await utimes(fileOf(c.id), old, old);
    const before = await stat(fileOf(c.id));
    const again = await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob });
    expect(again.status).toBe(201);
    const after = await stat(fileOf(c.id));
    expect(after.ino).toBe(before.ino); // not rewritten
    expect(after.mtimeMs).toBeGreaterThan(Date.now() - 60_000); // touched, as POST /v1/sizes with touch does

    const damaged = Buffer.from(c.blob);
    damaged[damaged.length - 1]! ^= 1;
    await writeFile(fileOf(c.id), damaged);
    expect((await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob })).status).toBe(201);
    expect((await readFile(fileOf(c.id))).equals(Buffer.from(c.blob))).toBe(true); // healed
  });

  it('refuses If-Match where it means nothing (chunks, manifests): 400, not ignored', async () => {
    const c = encodeChunk(patternBytes(4096, seed++));
    const ifMatch = { 'if-match': `"${'0'.repeat(64)}"` };
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob, headers: ifMatch }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', objectPath(Repository.manifestKey('web', V1)), { body: await testManifestBytes('web', V1, [undefined]), headers: ifMatch }), 400, 'BAD_REQUEST');
      expectRefused(await req('DELETE', objectPath(Repository.chunkKey(c.id)), { headers: ifMatch }), 400, 'BAD_REQUEST');
    });
  });
});

describe('symbolic links under the root', () => {
  let outside: string;
  beforeAll(async () => {
    outside = join(dir, 'outside');
    await mkdir(outside, { recursive: true });
  });

  it('neither reads nor writes through a link: folders and files that are links are refused (422)', async () => {
    // A readable secret outside, and links to it where a chunk, a lock folder and a disk folder would be.
    await writeFile(join(outside, 'secret'), 'not for clients');
    const c = encodeChunk(patternBytes(4096, seed++));
    await mkdir(join(root, 'chunks', c.id.slice(0, 2)), { recursive: true });
    await symlink(join(outside, 'secret'), join(root, 'chunks', c.id.slice(0, 2), c.id));
    await symlink(outside, join(root, 'locks'));
    const d = encodeChunk(patternBytes(4096, seed++));
    await mkdir(join(outside, 'chunkdir'));
    await rm(join(root, 'chunks', d.id.slice(0, 2)), { recursive: true, force: true });
    await symlink(join(outside, 'chunkdir'), join(root, 'chunks', d.id.slice(0, 2)));
    await mkdir(join(root, 'disks'), { recursive: true });
    await symlink(outside, join(root, 'disks', 'evil'));
    await writeFile(join(outside, `${V1}.manifest`), 'x');

    expectRefused(await req('GET', objectPath(Repository.chunkKey(c.id))), 422, 'REPO_CORRUPT');
    expect((await req('HEAD', objectPath(Repository.chunkKey(c.id)))).status).toBe(422);
    expectRefused(await req('POST', '/v1/sizes', { body: JSON.stringify({ keys: [Repository.chunkKey(c.id)], touch: true }), headers: { 'content-type': 'application/json' } }), 422, 'REPO_CORRUPT');
    expectRefused(await req('PUT', objectPath('locks/web.lock'), { body: JSON.stringify({ pid: 1, host: 'h', createdAt: 'now', purpose: 'backup' }), headers: { 'if-none-match': '*' } }), 422, 'REPO_CORRUPT');
    expectRefused(await req('GET', objectPath(`locks/x.lock`)), 422, 'REPO_CORRUPT');
    expectRefused(await req('PUT', objectPath(Repository.chunkKey(d.id)), { body: d.blob }), 422, 'REPO_CORRUPT');
    expectRefused(await req('GET', objectPath(Repository.manifestKey('evil', V1))), 422, 'REPO_CORRUPT');
    expect(await readdir(outside)).toEqual([`${V1}.manifest`, 'chunkdir', 'secret']); // nothing written there
    expect(await readdir(join(outside, 'chunkdir'))).toEqual([]);
    // Listings skip what is not a regular file or folder.
    const listed = (await req('GET', '/v1/list?prefix=disks%2F')).body.toString();
    expect(listed).not.toContain('evil');
    await rm(join(root, 'locks'));
    await rm(join(root, 'disks', 'evil'));
    await rm(join(root, 'chunks', c.id.slice(0, 2), c.id));
    await rm(join(root, 'chunks', d.id.slice(0, 2)));
  });
});

describe('keys', () => {
  const bad = [
    ['a short chunk id', `/v1/objects/chunks/ab/${'a'.repeat(63)}`],
    ['a chunk in the wrong folder', `/v1/objects/chunks/cd/ab${'a'.repeat(62)}`],
    ['upper-case hex', `/v1/objects/chunks/AB/AB${'a'.repeat(62)}`],
    ['a manifest without a version id', '/v1/objects/disks/web/latest.manifest'],
    ['"../" in a key', '/v1/objects/../blockrep.json'],
    ['"../" deeper', '/v1/objects/chunks/../../../etc/passwd'],
    ['"%2e%2e" in a key', '/v1/objects/%2e%2e/blockrep.json'],
    ['"%2e%2e" as a disk id', `/v1/objects/disks/%2e%2e/${V1}.manifest`],
    ['a disk id escaping with %2F..%2F', `/v1/objects/disks/a%252F..%252Fb/${V1}.manifest`],
    ['an encoded slash', '/v1/objects/locks/..%2Fblockrep.json'],
    ['a double-encoded dot-dot', `/v1/objects/disks/%252e%252e/${V1}.manifest`],
    ['a non-canonical disk component', `/v1/objects/disks/a%252fb/${V1}.manifest`],
    ['bad percent-encoding', '/v1/objects/locks/%zz.lock'],
    ['an empty segment', '/v1/objects/chunks//x'],
    ['an unknown folder', '/v1/objects/tmp/x'],
    ['a lock with "/" in its name', '/v1/objects/locks/a/b.lock'],
  ];
  it.each(bad)('refuses %s (400) whatever the method', async (_name, path) => {
    await storesNothing(async () => {
      for (const method of ['GET', 'HEAD', 'DELETE']) {
        const res = await req(method, path);
        expect(res.status, `${method} ${path}`).toBe(400);
        expect(res.headers['x-blockrep-code']).toBe('BAD_REQUEST');
      }
      expectRefused(await req('PUT', path, { body: 'x' }), 400, 'BAD_REQUEST');
    });
  });

  it('refuses to delete blockrep.json (405) or to write it other than to make the repository encrypted (400), serves it read-only', async () => {
    await storesNothing(async () => {
      expectRefused(await req('PUT', '/v1/objects/blockrep.json', { body: '{}' }), 400, 'BAD_REQUEST');
      expectRefused(await req('DELETE', '/v1/objects/blockrep.json'), 405, 'METHOD_NOT_ALLOWED');
      expect((await req('GET', '/v1/objects/blockrep.json')).json.format).toBe('blockrep-repository');
      expect((await req('GET', '/v1/config')).json.format).toBe('blockrep-repository');
    });
  });

  it('refuses unknown endpoints, methods, queries and bodies where none belong', async () => {
    await storesNothing(async () => {
      expectRefused(await req('GET', '/v1/nothing'), 400, 'BAD_REQUEST');
      expectRefused(await req('GET', '/etc/passwd'), 400, 'BAD_REQUEST');
      expectRefused(await req('POST', '/v1/objects/blockrep.json'), 405, 'METHOD_NOT_ALLOWED');
      expectRefused(await req('GET', '/v1/sizes'), 405, 'METHOD_NOT_ALLOWED');
      expectRefused(await req('GET', '/v1/objects/blockrep.json?x=1'), 400, 'BAD_REQUEST');
      expectRefused(await req('GET', '/v1/objects/blockrep.json', { body: 'xyz', headers: { 'content-length': 3 } }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', '/v1/objects/locks/a.lock', { body: '{}', headers: { 'if-none-match': '"etag"' } }), 400, 'BAD_REQUEST');
    });
  });
});

describe('listing', () => {
  it('lists as NDJSON with an end line, and refuses prefixes outside the repository', async () => {
    const ok = await req('GET', '/v1/list?prefix=disks%2F');
    expect(ok.status).toBe(200);
    expect(ok.body.toString().trim().split('\n').at(-1)).toMatch(/^\{"end":true,"count":\d+\}$/);
    for (const q of ['prefix=..%2F', 'prefix=disks%2F..%2F', 'prefix=chunks', 'prefix=disks%2F%252e%252e%2F', 'prefix=a&prefix=b', 'other=1', '']) {
      expectRefused(await req('GET', `/v1/list?${q}`), 400, 'BAD_REQUEST');
    }
  });
});

describe('sizes', () => {
  const post = (body: string, type = 'application/json'): Promise<RawResponse> => req('POST', '/v1/sizes', { body, headers: { 'content-type': type } });

  it('answers in order with null for missing objects', async () => {
    const c = encodeChunk(patternBytes(5000, seed++));
    await req('PUT', objectPath(Repository.chunkKey(c.id)), { body: c.blob });
    const res = await post(JSON.stringify({ keys: [Repository.chunkKey('ee'.repeat(32)), Repository.chunkKey(c.id)] }));
    expect(res.json).toEqual({ sizes: [null, c.blob.byteLength] });
  });

  it('refuses malformed JSON, other shapes, bad keys, too many keys and bodies over 1 MiB', async () => {
    await storesNothing(async () => {
      expectRefused(await post('{"keys": ['), 400, 'BAD_REQUEST');
      expectRefused(await post('{"keys": "chunks/ab"}'), 400, 'BAD_REQUEST');
      expectRefused(await post('{"keys": [], "extra": 1}'), 400, 'BAD_REQUEST');
      expectRefused(await post('{"keys": []}', 'text/plain'), 400, 'BAD_REQUEST');
      expectRefused(await post(JSON.stringify({ keys: ['../blockrep.json'] })), 400, 'BAD_REQUEST');
      expectRefused(await post(JSON.stringify({ keys: Array.from({ length: 10_001 }, () => 'blockrep.json') })), 413, 'TOO_LARGE');
      expectRefused(await post(JSON.stringify({ keys: [], pad: 'x'.repeat(1024 * 1024) })), 413, 'TOO_LARGE');
    });
  });
});

describe('manifests', () => {
  it('refuses a manifest that refers to a missing chunk (409 CHUNK_MISSING, naming it)', async () => {
    const present = encodeChunk(patternBytes(4096, seed++));
    expect((await req('PUT', objectPath(Repository.chunkKey(present.id)), { body: present.blob })).status).toBe(201);
    const missing = 'f0'.repeat(32);
    const body = await testManifestBytes('web', V1, [present.id, undefined, missing]);
    await storesNothing(async () => {
      const res = await req('PUT', objectPath(Repository.manifestKey('web', V1)), { body });
      expectRefused(res, 409, 'CHUNK_MISSING');
      expect(res.json.details).toEqual({ chunk: missing });
    });
    // Through the client, the code comes back as a BlockrepError with it.
    const backend = new HttpBackend({ url: server.url });
    await expect(backend.write(Repository.manifestKey('web', V1), body, { exclusive: true })).rejects.toMatchObject({ code: 'CHUNK_MISSING', details: { chunk: missing } });
    await backend.close();
  });

  it('refuses damaged, truncated, oversized and mislabelled manifests', async () => {
    const good = await testManifestBytes('web', V1, [undefined, undefined]);
    const key = Repository.manifestKey('web', V1);
    const damaged = Buffer.from(good);
    damaged[good.length - 40]! ^= 1;
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(key), { body: damaged }), 422, 'REPO_CORRUPT');
      expectRefused(await req('PUT', objectPath(key), { body: good.subarray(0, good.length - 1) }), 422, 'REPO_CORRUPT');
      expectRefused(await req('PUT', objectPath(key), { body: good.subarray(0, 40) }), 422, 'REPO_CORRUPT');
      expectRefused(await req('PUT', objectPath(key), { body: Buffer.concat([good, Buffer.alloc(10)]) }), 422, 'REPO_CORRUPT');
      expectRefused(await req('PUT', objectPath(key), { body: Buffer.concat([good, Buffer.alloc(10)]), headers: { 'transfer-encoding': 'chunked' } }), 413, 'TOO_LARGE');
      expectRefused(await req('PUT', objectPath(key), { body: Buffer.from('definitely not a manifest at all') }), 422, 'REPO_CORRUPT');
      expectRefused(await req('PUT', objectPath(Repository.manifestKey('db', V1)), { body: good }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', objectPath(Repository.manifestKey('web', '20261126T033504.123Z-bbbbbb')), { body: good }), 400, 'BAD_REQUEST');
    });
  });

  it('commits a good manifest once; a second commit of the version is 412 EXISTS', async () => {
    const body = await testManifestBytes('web', V1, [undefined]);
    const key = Repository.manifestKey('web', V1);
    expect((await req('PUT', objectPath(key), { body })).status).toBe(201);
    const other = await testManifestBytes('web', V1, [undefined]);
    await storesNothing(async () => {
      expectRefused(await req('PUT', objectPath(key), { body: other, headers: { 'if-none-match': '*' } }), 412, 'EXISTS');
      expectRefused(await req('PUT', objectPath(key), { body: other }), 412, 'EXISTS'); // versions are immutable either way
    });
    expect((await req('GET', objectPath(key))).body.equals(body)).toBe(true);
  });
});

describe('locks', () => {
  it('stores lock JSON of the expected form only', async () => {
    const path = objectPath('locks/web.lock');
    const create = { 'if-none-match': '*' };
    await storesNothing(async () => {
      expectRefused(await req('PUT', path, { body: 'not json', headers: create }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', path, { body: JSON.stringify({ pid: 1, host: 'h', createdAt: 'now', purpose: 'backup', extra: true }), headers: create }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', path, { body: JSON.stringify({ pid: -1, host: 'h', createdAt: 'now', purpose: 'backup' }), headers: create }), 400, 'BAD_REQUEST');
      expectRefused(await req('PUT', path, { body: 'x'.repeat(5000), headers: create }), 413, 'TOO_LARGE');
    });
    const good = JSON.stringify({ pid: 1, host: 'h', createdAt: 'now', purpose: 'backup' });
    expect((await req('PUT', path, { body: good, headers: create })).status).toBe(201);
    expectRefused(await req('PUT', path, { body: good, headers: create }), 412, 'EXISTS');
    const tag = `"${createHash('sha256').update(good).digest('hex')}"`;
    expectRefused(await req('DELETE', path, { headers: { 'if-match': `"${'0'.repeat(64)}"` } }), 412, 'CHANGED');
    expect((await req('DELETE', path, { headers: { 'if-match': tag } })).status).toBe(204);
    expectRefused(await req('DELETE', path, { headers: { 'if-match': tag } }), 412, 'CHANGED'); // gone
  });
});

describe('the request log', () => {
  it('logs a client that hangs up mid-upload as aborted by the client, not as a server failure', async () => {
    const c = encodeChunk(patternBytes(1024 * 1024, seed++));
    const r = slowRequest(server.url, 'PUT', objectPath(Repository.chunkKey(c.id)), { headers: { 'content-length': c.blob.length }, body: Buffer.from(c.blob).subarray(0, 100 * 1024) });
    await sleep(300);
    r.close();
    await r.answer;
    await sleep(300);
    const lines = server.stderr().trim().split('\n');
    expect(lines.filter((l) => / PUT chunk /.test(l) && /aborted by the client/.test(l))).toHaveLength(1);
    expect(lines.filter((l) => /INTERNAL/.test(l))).toEqual([]);
  });

  it('has one line per request: method, kind, status, bytes, time', () => {
    const lines = server.stderr().trim().split('\n');
    expect(lines.some((l) => /PUT chunk 422 .*in=\d+ out=\d+ \d+ms token=- code=CHUNK_CORRUPT$/.test(l))).toBe(true);
    expect(lines.some((l) => / POST sizes 200 /.test(l))).toBe(true);
    expect(lines.filter((l) => l.startsWith('error:'))).toEqual([]);
  });

  it('leaves the upload spool empty', async () => {
    expect(await readdir(join(root, '.tmp-uploads'))).toEqual([]);
  });
});
