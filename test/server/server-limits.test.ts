import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import { MANIFEST_DELTA_TYPE } from '../../src/protocol/http-protocol.js';
import { Repository } from '../../src/repository/repository.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { patternBytes } from '../support/qemu-tools.js';
import { slowRequest, type SlowAnswer, type SlowRequest } from '../support/slow-http.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * What one client may hold of a server, against the real `blockrep serve` with small limits:
 * request memory per token and per address (every body counts, manifest deltas too), a minimum
 * body rate, and connections per address. A client over its share hears 503 at once; the
 * others are served meanwhile.
 */
let server: RunningTestServer;
const secrets: Record<string, string> = {};
const MiB = 1024 * 1024;
const WINDOW_MS = 1500;
const path = (id: string): string => `/v1/objects/${Repository.chunkKey(id)}`;
const open: SlowRequest[] = [];

beforeAll(async () => {
  const dir = await tempDir('blockrep-server-limits-');
  const tokensFile = join(dir, 'tokens.json');
  for (const name of ['alice', 'bob']) secrets[name] = (await createToken(tokensFile, { name, disks: ['*'], rights: ['read', 'write'] })).secret;
  server = await startServer({
    root: join(dir, 'repo'),
    tokensFile,
    env: {
      BLOCKREP_SERVE_MEMORY_BYTES: String(8 * MiB),
      BLOCKREP_SERVE_CLIENT_MEMORY_BYTES: String(2 * MiB),
      BLOCKREP_SERVE_MEMORY_WAIT_MS: '2000',
      BLOCKREP_SERVE_MIN_BODY_BYTES: String(16 * 1024),
      BLOCKREP_SERVE_BODY_WINDOW_MS: String(WINDOW_MS),
      BLOCKREP_SERVE_CONNECTIONS_PER_ADDRESS: '8',
    },
  });
});
afterAll(async () => {
  for (const r of open) r.close();
  await server?.stop();
});

function request(token: string, method: string, p: string, options: { headers?: Record<string, string | number>; body?: Uint8Array | string; localAddress?: string } = {}): SlowRequest {
  const r = slowRequest(server.url, method, p, { ...options, headers: { authorization: `Bearer ${secrets[token]}`, ...options.headers } });
  open.push(r);
  return r;
}

/** The answer, or status -1 if none came within `ms` (today's server would keep waiting). */
async function within(r: SlowRequest, ms: number): Promise<SlowAnswer> {
  const none: SlowAnswer = { status: -1, headers: {}, body: '', json: undefined, ms };
  return Promise.race([r.answer, sleep(ms).then(() => none)]);
}

function expectBusy(a: SlowAnswer): void {
  expect({ status: a.status, code: a.json?.code, retryAfter: a.headers['retry-after'] }, a.body).toEqual({ status: 503, code: 'UNAVAILABLE', retryAfter: '1' });
}

describe('request memory', () => {
  it('counts a manifest delta against its client: a stalled 40 MiB delta is refused at its share, at once', async () => {
    const r = request('alice', 'PUT', `/v1/objects/${Repository.manifestKey('web', '20261126T033504.123Z-aaaaaa')}`, {
      headers: { 'content-type': MANIFEST_DELTA_TYPE, 'if-none-match': '*', 'content-length': 40 * MiB },
      body: Buffer.alloc(3 * MiB),
    });
    const a = await within(r, 5000);
    expectBusy(a);
    expect(a.json.message).toMatch(/share/);
    expect(a.ms).toBeLessThan(WINDOW_MS); // its share, not its slowness
    r.close();
  });

  it('keeps one token to its share: its next upload hears 503 at once, from any address, while another client is served', async () => {
    const big = encodeChunk(patternBytes(MiB, 11));
    const stalled: SlowRequest[] = [];
    for (let i = 0; i < 2; i++) {
      const r = request('alice', 'PUT', path(big.id), { headers: { 'content-length': big.blob.length }, body: Buffer.from(big.blob).subarray(0, 800 * 1024) });
      stalled.push(r);
    }
    // Kept above the minimum rate, so only their memory is in question.
    let sent = 800 * 1024;
    const keepAlive = setInterval(() => {
      for (const r of stalled) r.send(Buffer.from(big.blob).subarray(sent, sent + 17 * 1024));
      sent += 17 * 1024;
    }, 700);
    try {
      await sleep(500);
      const third = request('alice', 'PUT', path(big.id), { headers: { 'content-length': big.blob.length }, body: Buffer.from(big.blob).subarray(0, 100 * 1024) });
      const a = await within(third, 3000);
      expectBusy(a);
      expect(a.ms).toBeLessThan(WINDOW_MS);
      const elsewhere = request('alice', 'PUT', path(big.id), { headers: { 'content-length': big.blob.length }, body: Buffer.from(big.blob).subarray(0, 100 * 1024), localAddress: '127.0.0.2' });
      expectBusy(await within(elsewhere, 3000));
      // Bob, from another address, is not kept waiting by Alice's uploads.
      const small = encodeChunk(patternBytes(4096, 12));
      const b = await within(request('bob', 'PUT', path(small.id), { headers: { 'content-length': small.blob.length }, body: small.blob, localAddress: '127.0.0.2' }), 3000);
      expect(b.status, b.body).toBe(201);
      expect(b.ms).toBeLessThan(1000);
      for (const r of stalled) expect(await within(r, 10)).toMatchObject({ status: -1 }); // still going
    } finally {
      clearInterval(keepAlive);
      for (const r of stalled) r.close();
    }
  });
});

describe('body rate', () => {
  it('refuses a body that stalls (503, connection closed) after the window, not after the silence timeout', async () => {
    const c = encodeChunk(patternBytes(8192, 13));
    const r = request('bob', 'PUT', path(c.id), { headers: { 'content-length': c.blob.length }, body: Buffer.from(c.blob).subarray(0, 100) });
    const a = await within(r, 8000);
    expectBusy(a);
    expect(a.headers.connection).toBe('close');
    expect(a.json.message).toMatch(/slower than/);
    expect(a.ms).toBeGreaterThanOrEqual(WINDOW_MS - 50);
    expect(a.ms).toBeLessThan(WINDOW_MS + 3000);
  });

  it('takes a slow body that keeps making progress', async () => {
    const c = encodeChunk(patternBytes(64 * 1024, 14));
    const blob = Buffer.from(c.blob);
    const r = request('bob', 'PUT', path(c.id), { headers: { 'content-length': blob.length }, body: blob.subarray(0, 20 * 1024) });
    for (let at = 20 * 1024; at < blob.length; at += 20 * 1024) {
      await sleep(WINDOW_MS * 0.6);
      r.send(blob.subarray(at, at + 20 * 1024));
    }
    expect((await within(r, 5000)).status).toBe(201);
  });
});

describe('connections', () => {
  it('refuses connections beyond the limit of one address at once (503), and serves other addresses', async () => {
    const idle: Socket[] = [];
    try {
      for (let i = 0; i < 8; i++) {
        const s = connect({ host: '127.0.0.1', port: Number(new URL(server.url).port), localAddress: '127.0.0.3' });
        s.on('error', () => undefined);
        idle.push(s);
      }
      await Promise.all(idle.map((s) => new Promise((resolve) => s.once('connect', resolve))));
      await sleep(100);
      const ninth = await within(request('bob', 'GET', '/v1/config', { localAddress: '127.0.0.3' }), 3000);
      expectBusy(ninth);
      expect(ninth.ms).toBeLessThan(1000);
      const other = await within(request('bob', 'GET', '/v1/config', { localAddress: '127.0.0.4' }), 3000);
      expect(other.status).toBe(200);
    } finally {
      for (const s of idle) s.destroy();
    }
    await sleep(200);
    expect((await within(request('bob', 'GET', '/v1/config', { localAddress: '127.0.0.3' }), 3000)).status).toBe(200); // freed again
    expect(server.stderr()).toMatch(/refusing connections from 127\.0\.0\.3/);
  });
});
