import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Backend, type S3BackendOptions } from '../../src/backend/s3/s3-backend.js';
import { parseS3Location } from '../../src/backend/s3/s3-location.js';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { startFaultProxy, type FaultAction, type FaultProxy } from '../support/fault-proxy.js';
import { patternBytes } from '../support/qemu-tools.js';
import { skipS3, startS3Server, type S3Server } from '../support/s3-server.js';

/**
 * What is particular to S3, against a real Ceph RGW: its answers (403, 404, 412, 503), faults
 * on the way (a loopback proxy that cuts or answers for the server), bad credentials, a missing
 * bucket, a server without conditional writes, a prefix shared with other data, and the gc
 * touch and its recheck.
 */
let server: S3Server;
let raw: S3Client;
let cache: string;
let seed = 1;
const chunk = (bytes = 5000) => encodeChunk(patternBytes(bytes, seed++));
const lockBody = (purpose: string): Buffer => Buffer.from(JSON.stringify({ pid: process.pid, host: hostname(), createdAt: new Date().toISOString(), purpose }));
const prefix = (): string => `t-${randomBytes(4).toString('hex')}/`;

function backend(options: Partial<S3BackendOptions> = {}): S3Backend {
  return new S3Backend({
    bucket: server.bucket,
    prefix: prefix(),
    endpoint: server.endpoint,
    region: server.region,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    ...options,
  });
}

/** A backend through a proxy whose faults come from `plan` (by request index; then 'pass'). */
async function through(plan: (method: string, url: string, i: number, headers: Record<string, unknown>) => FaultAction, options: Partial<S3BackendOptions> = {}): Promise<{ b: S3Backend; proxy: FaultProxy; done(): Promise<void> }> {
  const proxy = await startFaultProxy(server.endpoint, (req, i) => plan(req.method ?? '', req.url ?? '', i, req.headers));
  const b = backend({ endpoint: proxy.url, maxAttempts: 4, ...options });
  return {
    b,
    proxy,
    done: async () => {
      await b.close();
      await proxy.close();
    },
  };
}

const SLOW_DOWN = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';

describe.skipIf(skipS3)('S3Backend against Ceph RGW: faults and S3 specifics (BLOCKREP_SKIP_S3_TESTS=1 skips)', () => {
  beforeAll(async () => {
    cache = await mkdtemp(join(tmpdir(), 'blockrep-s3-faults-'));
    process.env.BLOCKREP_CACHE_DIR = cache;
    server = await startS3Server();
    raw = new S3Client({ endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
  });
  afterAll(async () => {
    raw?.destroy();
    await server?.stop();
    if (cache) await rm(cache, { recursive: true, force: true });
  });

  it('retries 503 SlowDown with backoff, and counts every attempt', async () => {
    const t = await through((method, _url, i) => (method === 'PUT' && i < 2 ? { status: 503, body: SLOW_DOWN } : 'pass'));
    const c = chunk();
    await t.b.write(Repository.chunkKey(c.id), c.blob);
    expect(t.proxy.seen.map((s) => s.method)).toEqual(['PUT', 'PUT', 'PUT']);
    expect(t.b.requestCounts()).toMatchObject({ PUT: 3 });
    expect((await t.b.read(Repository.chunkKey(c.id))).equals(Buffer.from(c.blob))).toBe(true);
    await t.done();
  });

  it('gives up with UNAVAILABLE when 503s go on, and when the endpoint is unreachable', async () => {
    const t = await through(() => ({ status: 503, body: SLOW_DOWN }), { maxAttempts: 3 });
    await expect(t.b.read('blockrep.json')).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/SlowDown.*after 3 tries/) });
    expect(t.proxy.seen).toHaveLength(3);
    await t.done();
    const closed = await startFaultProxy(server.endpoint, () => 'pass');
    const url = closed.url;
    await closed.close(); // nothing listens there any more
    const b = backend({ endpoint: url, maxAttempts: 2 });
    await expect(b.read('blockrep.json')).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('cannot reach') });
    await b.close();
  });

  it('maps 403 to access denied, a bodiless 404 to NOT_FOUND, and 412 on an exclusive write to EXISTS', async () => {
    const t = await through((method, url) => (method === 'GET' && url.includes('forbidden') ? { status: 403 } : method === 'GET' && url.includes('gone') ? { status: 404 } : 'pass'));
    await expect(t.b.read('locks/forbidden.lock')).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('access denied') });
    await expect(t.b.read('locks/gone.lock')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await t.b.write('locks/x.lock', lockBody('a'), { exclusive: true });
    await expect(t.b.write('locks/x.lock', lockBody('b'), { exclusive: true })).rejects.toMatchObject({ code: 'EXISTS' });
    await t.done();
  });

  it('resends a PUT whose connection was cut mid-body; a lost answer to an exclusive PUT is recognised as its own', async () => {
    let cuts = 0;
    let lost = 0;
    const t = await through((method, url) => {
      if (method === 'PUT' && url.includes('chunks/') && cuts++ === 0) return 'cut-body';
      if (method === 'PUT' && url.includes('locks/own') && lost++ === 0) return 'lose-answer';
      return 'pass';
    });
    const c = chunk(3 * 1024 * 1024);
    await t.b.write(Repository.chunkKey(c.id), c.blob);
    expect(t.proxy.seen.filter((s) => s.method === 'PUT' && s.url.includes('chunks/')).map((s) => s.action)).toEqual(['cut-body', 'pass']);
    expect((await t.b.read(Repository.chunkKey(c.id))).equals(Buffer.from(c.blob))).toBe(true);
    await t.b.write('locks/own.lock', lockBody('own'), { exclusive: true });
    expect(lost).toBe(2);
    await t.done();
  });

  it('refuses a server that ignores conditional writes, naming the missing feature', async () => {
    // A "server" that says yes to every conditional PUT without looking (as old S3 clones do).
    const t = await through((method, _url, _i, headers) => (method === 'PUT' && headers['if-none-match'] ? { status: 200 } : 'pass'));
    await expect(t.b.write('locks/y.lock', lockBody('y'), { exclusive: true })).rejects.toMatchObject({
      code: 'UNSUPPORTED_STORAGE',
      message: expect.stringContaining('If-None-Match'),
    });
    await t.done();
  });

  it('says access denied for wrong or missing credentials, and names the command that creates a missing bucket', async () => {
    const wrong = backend({ credentials: { accessKeyId: server.accessKeyId, secretAccessKey: 'not-the-secret' } });
    await expect(Repository.open(wrong, { create: true })).rejects.toMatchObject({ code: 'UNAUTHORIZED', message: expect.stringContaining('access denied') });
    const unknown = backend({ credentials: { accessKeyId: 'AKIANOBODY0000000000', secretAccessKey: 'x' } });
    await expect(unknown.read('blockrep.json')).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    const none = backend({ credentials: undefined });
    const saved = { ...process.env };
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE']) delete process.env[k];
    process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/credentials';
    process.env.AWS_CONFIG_FILE = '/nonexistent/config';
    try {
      await expect(none.read('blockrep.json')).rejects.toMatchObject({ code: 'UNAUTHORIZED', message: expect.stringContaining('no S3 credentials') });
    } finally {
      process.env = saved;
    }
    const missing = backend({ bucket: 'no-such-bucket-here' });
    await expect(Repository.open(missing, { create: true })).rejects.toMatchObject({ code: 'REPO_NOT_FOUND', message: expect.stringContaining('aws s3 mb s3://no-such-bucket-here') });
    for (const b of [wrong, unknown, none, missing]) await b.close();
  });

  it('never lists or touches what is outside its prefix', async () => {
    const base = `shared-${randomBytes(3).toString('hex')}`;
    const others = [`${base}/other/file`, `${base}/repo-sibling/blockrep.json`, `${base}/repo2/chunks/00/x`, `${base}-outside`, `${base}/.tmp-probe-foreign`];
    for (const key of others) await raw.send(new PutObjectCommand({ Bucket: server.bucket, Key: key, Body: 'not blockrep' }));
    const before = await Promise.all(others.map(async (key) => (await raw.send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }))).LastModified!.getTime()));
    const t = await through(() => 'pass', { prefix: `${base}/repo/` });
    const repo = await Repository.open(t.b, { create: true });
    const c = chunk();
    await repo.putChunk(c);
    expect(await repo.hasChunks([c.id, chunk().id])).toEqual([true, false]);
    const lock = await repo.lockDisk('vm/disk', 'backup');
    await lock.release();
    const listed = [];
    for await (const o of t.b.list('')) listed.push(o.key);
    expect(listed.sort()).toEqual(['blockrep.json', Repository.chunkKey(c.id)]);
    expect(await t.b.removeStaleTemps(Date.now() + 60_000)).toEqual({ files: 0, bytes: 0 });
    // Every request named a key under the prefix, or listed under it.
    for (const s of t.proxy.seen) {
      const u = new URL(s.url, 'http://x');
      const inside = u.pathname.startsWith(`/${server.bucket}/${base}/repo/`) || (u.pathname === `/${server.bucket}` || u.pathname === `/${server.bucket}/`) && (u.searchParams.get('prefix') ?? '').startsWith(`${base}/repo/`);
      expect(inside, `${s.method} ${s.url}`).toBe(true);
    }
    const after = await Promise.all(others.map(async (key) => (await raw.send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }))).LastModified!.getTime()));
    expect(after).toEqual(before);
    // A prefix that holds other data is not taken for an empty repository.
    const busy = backend({ prefix: `${base}/other/` });
    await expect(Repository.open(busy, { create: true })).rejects.toMatchObject({ code: 'REPO_NOT_FOUND', message: expect.stringContaining('not empty') });
    await busy.close();
    await t.done();
    expect(parseS3Location('s3://bucket/a/b/')).toEqual({ bucket: 'bucket', prefix: 'a/b/' });
    expect(() => parseS3Location('s3://bucket/a/../b')).toThrow(/prefix/);
  });

  it('gc: a touch refreshes LastModified; a chunk removed between the touch and the publish fails the flush', async () => {
    const b = backend();
    const [kept, lost] = [chunk(), chunk()];
    const [keptKey, lostKey] = [Repository.chunkKey(kept.id), Repository.chunkKey(lost.id)];
    await b.write(keptKey, kept.blob);
    await b.write(lostKey, lost.blob);
    await new Promise((r) => setTimeout(r, 1100));
    const cutoff = Date.now() - 50; // after both writes, before the touches
    expect(await b.sizes([keptKey, lostKey], { touch: true })).toEqual([kept.blob.byteLength, lost.blob.byteLength]);
    expect(b.requestCounts().COPY).toBe(2);
    // gc re-reads the age right before it deletes: the touch made it young.
    expect(await b.removeIfOlder(keptKey, cutoff)).toBe('young');
    // What a gc that read the age just before the touch would then do: delete it anyway.
    await raw.send(new DeleteObjectCommand({ Bucket: server.bucket, Key: `${(b as any).prefix}${lostKey}` }));
    const started = Date.now();
    await expect(b.flush()).rejects.toMatchObject({ code: 'CHUNK_MISSING', message: expect.stringContaining('run the backup again') });
    // The recheck came only after the window in which such a gc's DELETE lands.
    expect(Date.now() - started).toBeGreaterThan(3000);
    await b.flush(); // nothing left to recheck
    await b.close();
  });

  it('lock leases: aged by the server clock, renewed and released with If-Match on the ETag', async () => {
    const b = backend();
    const repo = await Repository.open(b, { create: true });
    const lock = await repo.lockDisk('vm/leased', 'backup');
    const key = 'locks/vm%2Fleased.lock';
    expect(await b.objectAgeMs(key)).toBeLessThan(3000);
    await lock.assertHeld(); // a renewal: a PUT with If-Match
    // A stranger's write makes the ETag differ: the holder finds out it lost the lock.
    await raw.send(new PutObjectCommand({ Bucket: server.bucket, Key: `${(b as any).prefix}${key}`, Body: lockBody('thief') }));
    await expect(lock.assertHeld()).rejects.toMatchObject({ code: 'LOCK_LOST' });
    await lock.release(); // leaves the thief's lock alone
    expect(JSON.parse((await b.read(key)).toString()).purpose).toBe('thief');
    const listing = await raw.send(new ListObjectsV2Command({ Bucket: server.bucket, Prefix: (b as any).prefix }));
    expect(listing.Contents?.some((o) => o.Key!.includes('.tmp-probe'))).toBe(false);
    await b.close();
  });
});
