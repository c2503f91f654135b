import { readdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { startFaultProxy, type FaultAction, type FaultProxy } from '../support/fault-proxy.js';
import { patternBytes } from '../support/qemu-tools.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * HttpBackend's failure handling, through a misbehaving proxy in front of a real server:
 * transient failures are retried (and writes resent whole), verdicts of the server are not.
 */
let dir: string;
let server: RunningTestServer;
let secret: string;
let seed = 1;
const fast = { attempts: 4, baseDelayMs: 5, maxDelayMs: 20 };

beforeAll(async () => {
  dir = await tempDir('blockrep-http-retry-');
  const tokensFile = join(dir, 'tokens.json');
  ({ secret } = await createToken(tokensFile, { name: 'retry', disks: ['*'], rights: ['read', 'write', 'admin'] }));
  server = await startServer({ root: join(dir, 'repo'), tokensFile });
});
afterAll(async () => {
  await server?.stop();
});

/** A backend through a proxy whose faults come from `faults` (by request index; then 'pass'). */
async function through(faults: Record<number, FaultAction>, options: { headersMs?: number } = {}): Promise<{ backend: HttpBackend; proxy: FaultProxy; done(): Promise<void> }> {
  const proxy = await startFaultProxy(server.url, (_req, i) => faults[i] ?? 'pass');
  const backend = new HttpBackend({ url: proxy.url, token: secret, retry: fast, ...(options.headersMs ? { timeouts: { headersMs: options.headersMs } } : {}) });
  return {
    backend,
    proxy,
    done: async () => {
      await backend.close();
      await proxy.close();
    },
  };
}

const lockBody = (purpose: string): Buffer => Buffer.from(JSON.stringify({ pid: process.pid, host: hostname(), createdAt: new Date().toISOString(), purpose }));

describe('HttpBackend retries', () => {
  it('retries 503, 502, 429 and 504 answers, then succeeds', async () => {
    const t = await through({ 0: { status: 503 }, 1: { status: 502 }, 2: { status: 429, retryAfter: '0' }, 3: 'pass' });
    const c = encodeChunk(patternBytes(5000, seed++));
    expect(await t.backend.size(Repository.chunkKey(c.id))).toBeUndefined();
    expect(t.proxy.seen.map((s) => s.method)).toEqual(['HEAD', 'HEAD', 'HEAD', 'HEAD']);
    await t.done();
  });

  it('gives up after its attempts with UNAVAILABLE', async () => {
    const t = await through({ 0: { status: 503 }, 1: { status: 504 }, 2: { status: 503 }, 3: { status: 503 } });
    await expect(t.backend.size('blockrep.json')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(t.proxy.seen).toHaveLength(4);
    await t.done();
  });

  it('never retries a 4xx verdict', async () => {
    const proxy = await startFaultProxy(server.url, () => 'pass');
    const wrong = new HttpBackend({ url: proxy.url, token: `brt_${'A'.repeat(43)}`, retry: fast });
    await expect(wrong.size('blockrep.json')).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    const right = new HttpBackend({ url: proxy.url, token: secret, retry: fast });
    const c = encodeChunk(patternBytes(5000, seed++));
    const damaged = Buffer.from(c.blob);
    damaged[damaged.length - 1]! ^= 1;
    await expect(right.write(Repository.chunkKey(c.id), damaged)).rejects.toMatchObject({ code: 'CHUNK_CORRUPT' });
    expect(proxy.seen).toHaveLength(2);
    await wrong.close();
    await right.close();
    await proxy.close();
  });

  it('resends a Uint8Array body whole after a dropped connection', async () => {
    const t = await through({ 0: 'reset', 1: 'reset' });
    const c = encodeChunk(patternBytes(300_000, seed++));
    expect(await t.backend.write(Repository.chunkKey(c.id), c.blob)).toBe(c.blob.byteLength);
    expect(t.proxy.seen.map((s) => s.method)).toEqual(['PUT', 'PUT', 'PUT']);
    expect((await t.backend.read(Repository.chunkKey(c.id))).equals(Buffer.from(c.blob))).toBe(true);
    await t.done();
  });

  it('spools a streamed body, so it is resent whole too', async () => {
    const t = await through({ 0: 'reset' });
    const c = encodeChunk(patternBytes(2_000_000, seed++));
    const blob = Buffer.from(c.blob);
    const pieces = async function* (): AsyncIterable<Uint8Array> {
      for (let pos = 0; pos < blob.length; pos += 65_536) yield blob.subarray(pos, pos + 65_536);
    };
    expect(await t.backend.write(Repository.chunkKey(c.id), pieces())).toBe(blob.length);
    expect((await t.backend.read(Repository.chunkKey(c.id))).equals(blob)).toBe(true);
    await t.done();
  });

  it('an exclusive write whose answer was lost is recognised as its own on the retry', async () => {
    const t = await through({ 0: 'lose-answer' });
    const key = 'locks/retry-own.lock';
    const body = lockBody('mine');
    await t.backend.write(key, body, { exclusive: true });
    expect(t.proxy.seen.map((s) => s.method)).toEqual(['PUT', 'PUT', 'HEAD', 'GET']);
    // Someone else's object is still EXISTS, even after a retry.
    const u = await through({ 0: 'lose-answer' });
    await u.backend.write('locks/retry-theirs.lock', lockBody('theirs'), { exclusive: true });
    await expect(u.backend.write('locks/retry-theirs.lock', lockBody('mine, later'), { exclusive: true })).rejects.toMatchObject({ code: 'EXISTS' });
    await t.done();
    await u.done();
  });

  it('times out a server that does not answer, and retries', async () => {
    const t = await through({ 0: 'hang' }, { headersMs: 300 });
    const started = Date.now();
    expect(await t.backend.size('blockrep.json')).toBeGreaterThan(0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    expect(t.proxy.seen).toHaveLength(2);
    await t.done();
  });

  it('says UNAVAILABLE when nothing listens, after its attempts', async () => {
    const proxy = await startFaultProxy(server.url, () => 'pass');
    const url = proxy.url;
    await proxy.close();
    const backend = new HttpBackend({ url, token: secret, retry: fast });
    await expect(backend.size('blockrep.json')).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/connection refused.*4 attempts/) });
    await backend.close();
  });

  it('leaves no temporary files in the repository after all this', async () => {
    expect(await readdir(join(dir, 'repo', '.tmp-uploads'))).toEqual([]);
  });
});
