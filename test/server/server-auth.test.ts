import { createHash } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { createRequestHandler } from '../../src/server/repository-server.js';
import { TokenStore } from '../../src/server/token-store.js';
import { CHUNK_PATCH_TYPE, TOKEN_PATTERN } from '../../src/protocol/http-protocol.js';
import { encodePatch, sliceHashes } from '../../src/chunk/chunk-patch.js';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { patternBytes } from '../support/qemu-tools.js';
import { rawRequest, type RawResponse } from '../support/raw-http.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { disposeTestManifests, testManifest } from '../support/test-manifests.js';

/**
 * Tokens and rights: 401 without a known token, 403 without the right, the same answer for a
 * disk the token cannot see whether or not it exists, listings filtered, tokens managed with
 * `blockrep token` and picked up by a running server.
 */
let dir: string;
let root: string;
let tokensFile: string;
let server: RunningTestServer;
const secrets: Record<string, string> = {};
const V1 = '20261126T033504.123Z-aaaaaa';
const chunk = encodeChunk(patternBytes(4096, 77));
const enc = (key: string): string => `/v1/objects/${key.split('/').map(encodeURIComponent).join('/')}`;

const as = (token: string | undefined, method: string, path: string, options: { body?: string | Uint8Array; headers?: Record<string, string> } = {}): Promise<RawResponse> =>
  rawRequest(server.url, method, path, { ...options, headers: { ...options.headers, ...(token ? { authorization: `Bearer ${token}` } : {}) } });

async function files(): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(relative(root, join(e.parentPath, e.name)));
  return out.sort();
}

beforeAll(async () => {
  dir = await tempDir('blockrep-server-auth-');
  root = join(dir, 'repo');
  tokensFile = join(dir, 'tokens.json');
  // The admin token through the CLI, the way an operator makes one.
  const made = await runCli(['token', 'create', '--tokens', tokensFile, '--name', 'admin', '--disks', '*', '--rights', 'read,write,admin']);
  expect(made.code, made.stderr).toBe(0);
  secrets.admin = made.stdout.trim().split('\n').at(-1)!;
  for (const [name, disks, rights] of [
    ['web-reader', ['web'], ['read']],
    ['web-writer', ['web'], ['read', 'write']],
    ['vm1-reader', ['vm1'], ['read']],
    ['pusher', ['*'], ['write']],
  ] as const) {
    secrets[name] = (await createToken(tokensFile, { name, disks: [...disks], rights: [...rights] })).secret;
  }
  server = await startServer({ root, tokensFile, env: { BLOCKREP_CACHE_DIR: join(dir, 'cache') } });
  // Disks web, db, vm1/vda and vm10, one version each.
  const admin = await Repository.open(new HttpBackend({ url: server.url, token: secrets.admin! }));
  await admin.putChunk(chunk);
  for (const disk of ['web', 'db', 'vm1/vda', 'vm10']) await admin.publishVersion(disk, V1, await testManifest(disk, V1, [chunk.id]));
  await admin.backend.close();
});
afterAll(async () => {
  await server?.stop();
  await disposeTestManifests();
});

describe('tokens', () => {
  it('stores only the hash of each secret, in a file only its owner reads', async () => {
    expect(secrets.admin).toMatch(TOKEN_PATTERN);
    const text = await readFile(tokensFile, 'utf8');
    for (const s of Object.values(secrets)) expect(text).not.toContain(s);
    expect(JSON.parse(text).tokens.map((t: { name: string; hash: string }) => [t.name, /^[0-9a-f]{64}$/.test(t.hash)])).toEqual([
      ['admin', true],
      ['web-reader', true],
      ['web-writer', true],
      ['vm1-reader', true],
      ['pusher', true],
    ]);
    expect((await stat(tokensFile)).mode & 0o777).toBe(0o600);
  });

  it('401 without a token, with a malformed one, or with an unknown one', async () => {
    const before = await files();
    for (const token of [undefined, 'not-a-token', `brt_${'x'.repeat(43)}`]) {
      for (const [method, path] of [['GET', '/v1/config'], ['PUT', enc(Repository.chunkKey(chunk.id))], ['GET', '/v1/list?prefix=disks%2F']] as const) {
        const res = await as(token, method, path, method === 'PUT' ? { body: chunk.blob } : {});
        expect([res.status, res.json.code], `${method} ${path}`).toEqual([401, 'UNAUTHORIZED']);
        expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
      }
    }
    const basic = await as(undefined, 'GET', '/v1/config', { headers: { authorization: 'Basic YTpi' } });
    expect(basic.status).toBe(401);
    expect(await files()).toEqual(before);
  });

  it('403 without the right: reading is not writing, writing is not deleting', async () => {
    const before = await files();
    const other = encodeChunk(patternBytes(4096, 78));
    expect((await as(secrets['web-reader'], 'PUT', enc(Repository.chunkKey(other.id)), { body: other.blob })).status).toBe(403);
    expect((await as(secrets['web-reader'], 'PUT', enc('locks/web.lock'), { body: '{}' })).status).toBe(403);
    expect((await as(secrets['web-reader'], 'POST', '/v1/flush')).status).toBe(403);
    expect((await as(secrets['web-writer'], 'DELETE', enc(Repository.chunkKey(chunk.id)))).status).toBe(403);
    expect((await as(secrets['web-writer'], 'DELETE', enc(Repository.manifestKey('web', V1)))).status).toBe(403);
    expect((await as(secrets['web-writer'], 'GET', '/v1/list?prefix=chunks%2F')).status).toBe(403);
    expect((await as(secrets['web-writer'], 'GET', '/v1/list?prefix=')).status).toBe(403);
    expect(await files()).toEqual(before);
    // What they may do.
    expect((await as(secrets['web-reader'], 'GET', enc(Repository.manifestKey('web', V1)))).status).toBe(200);
    expect((await as(secrets['web-reader'], 'GET', enc(Repository.chunkKey(chunk.id)))).status).toBe(200);
    expect((await as(secrets['web-writer'], 'PUT', enc(Repository.chunkKey(other.id)), { body: other.blob })).status).toBe(201);
    expect((await as(secrets.admin, 'GET', '/v1/list?prefix=chunks%2F')).status).toBe(200);
    expect((await as(secrets.admin, 'DELETE', enc(Repository.chunkKey(other.id)))).status).toBe(204);
  });

  it('answers the same for a disk the token cannot see, whether or not it exists', async () => {
    const t = secrets['web-reader'];
    const pairs: Array<[string, string, string?]> = [
      ['GET', enc(Repository.manifestKey('db', V1)), enc(Repository.manifestKey('nothere', V1))],
      ['HEAD', enc(Repository.manifestKey('db', V1)), enc(Repository.manifestKey('nothere', V1))],
      ['GET', '/v1/list?prefix=disks%2Fdb%2F', '/v1/list?prefix=disks%2Fnothere%2F'],
      ['GET', enc('locks/db.lock'), enc('locks/nothere.lock')],
    ];
    for (const [method, existing, missing] of pairs) {
      const a = await as(t, method, existing);
      const b = await as(t, method, missing!);
      expect(a.status, `${method} ${existing}`).toBe(403);
      expect(b.status).toBe(403);
      expect(a.headers['x-blockrep-code']).toBe(b.headers['x-blockrep-code']);
      expect(a.body.toString().replace(/db/g, 'X')).toBe(b.body.toString().replace(/nothere/g, 'X'));
    }
    const sizes = await as(t, 'POST', '/v1/sizes', { body: JSON.stringify({ keys: [Repository.manifestKey('web', V1), Repository.manifestKey('db', V1)] }), headers: { 'content-type': 'application/json' } });
    expect(sizes.status).toBe(403);
  });

  it('refuses a lock written or removed without a condition by a writer: a live lease is broken only by its holder, or an admin', async () => {
    const path = enc('locks/web.lock');
    const t = secrets['web-writer'];
    const good = JSON.stringify({ pid: 1, host: 'h', createdAt: 'now', purpose: 'backup' });
    const tag = `"${createHash('sha256').update(good).digest('hex')}"`;
    expect((await as(t, 'PUT', path, { body: good, headers: { 'if-none-match': '*' } })).status).toBe(201);
    const takeover = JSON.stringify({ pid: 2, host: 'x', createdAt: 'now', purpose: 'takeover' });
    for (const res of [
      await as(t, 'PUT', path, { body: takeover }),
      await as(t, 'DELETE', path),
      await as(t, 'PUT', path, { body: good, headers: { 'if-none-match': '*', 'if-match': tag } }),
    ]) {
      expect([res.status, res.json.code]).toEqual([400, 'BAD_REQUEST']);
    }
    expect((await as(t, 'GET', path)).body.toString()).toBe(good);
    // The holder renews and releases by naming its lock; an admin of the disk may force.
    expect((await as(t, 'PUT', path, { body: takeover, headers: { 'if-match': tag } })).status).toBe(201);
    expect((await as(secrets.admin, 'DELETE', path)).status).toBe(204);
    expect((await as(t, 'GET', path)).status).toBe(404);
  });

  it('takes the scheme "bearer" in any case (RFC 7235)', async () => {
    for (const scheme of ['bearer', 'BEARER', 'bEaReR']) {
      const res = await rawRequest(server.url, 'GET', '/v1/config', { headers: { authorization: `${scheme} ${secrets.admin}` } });
      expect(res.status, scheme).toBe(200);
    }
  });

  it('a write-only token may not plan or send patches (they tell what is stored); the client sends such blocks whole', async () => {
    const t = secrets.pusher;
    const raw = patternBytes(4096, 77);
    raw[5]! ^= 1; // one slice differs from the stored chunk
    const plan = { sliceBytes: 512, items: [{ base: chunk.id, hashes: sliceHashes(raw, 512).toString('base64') }] };
    const res = await as(t, 'POST', '/v1/patch-plans', { body: JSON.stringify(plan), headers: { 'content-type': 'application/json' } });
    expect([res.status, res.json.code]).toEqual([403, 'FORBIDDEN']);
    const next = encodeChunk(raw);
    const patch = encodePatch(raw, 512, chunk.id, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
    expect((await as(t, 'PUT', enc(Repository.chunkKey(next.id)), { body: patch, headers: { 'content-type': CHUNK_PATCH_TYPE } })).status).toBe(403);
    // With read as well, the plan answers.
    expect((await as(secrets['web-writer'], 'POST', '/v1/patch-plans', { body: JSON.stringify(plan), headers: { 'content-type': 'application/json' } })).json.items[0]).not.toBeNull();
    // The client: no plan (every block whole), no failure; the whole chunk is stored.
    const backend = new HttpBackend({ url: server.url, token: t! });
    expect(await backend.planChunkPatches(512, [{ baseId: chunk.id, hashes: sliceHashes(raw, 512) }])).toEqual([undefined]);
    await backend.write(Repository.chunkKey(next.id), next.blob);
    await backend.close();
    expect((await as(secrets.admin, 'HEAD', enc(Repository.chunkKey(next.id)))).status).toBe(200);
  });

  it('lists only the disks a token may read ("vm1" covers vm1/vda, not vm10)', async () => {
    const list = async (token: string): Promise<string[]> => {
      const res = await as(token, 'GET', '/v1/list?prefix=disks%2F');
      return res.body
        .toString()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((l) => l.key)
        .map((l) => l.key.split('/')[1]);
    };
    expect(await list(secrets['web-reader']!)).toEqual(['web']);
    expect(await list(secrets['vm1-reader']!)).toEqual(['vm1%2Fvda']);
    expect(await list(secrets.admin!)).toEqual(['db', 'vm1%2Fvda', 'vm10', 'web']);
  });
});

describe('listing for a narrow token', () => {
  it('walks only the folders of the disks the token may read', async () => {
    // The same handler as `blockrep serve`, on loopback, over the same folder; its store notes
    // which folders are walked.
    const walked: string[] = [];
    const local = new LocalBackend(root, { noFollow: true });
    const store = new Proxy(local, {
      get(target, prop, receiver) {
        if (prop === 'list') return (prefix: string) => (walked.push(prefix), target.list(prefix));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const repo = await Repository.open(store);
    const handler = createRequestHandler({ repo, store, tokens: await TokenStore.open(tokensFile), spoolDir: join(dir, 'spool'), log: () => undefined });
    const http = createServer(handler);
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
      const res = await rawRequest(url, 'GET', '/v1/list?prefix=disks%2F', { headers: { authorization: `Bearer ${secrets['web-reader']}` } });
      expect(res.body.toString().trim().split('\n').map((l) => JSON.parse(l).key ?? 'end')).toEqual([`disks/web/${V1}.manifest`, 'end']);
      expect(walked).toEqual(['disks/web/']);
      walked.length = 0;
      const all = await rawRequest(url, 'GET', '/v1/list?prefix=disks%2F', { headers: { authorization: `Bearer ${secrets.admin}` } });
      expect(all.body.toString().trim().split('\n')).toHaveLength(5);
      expect(walked).toEqual(['disks/']);
    } finally {
      http.closeAllConnections();
      await new Promise((r) => http.close(r));
    }
  });
});

describe('the CLI against a server with tokens', () => {
  let image: string;
  beforeAll(async () => {
    image = join(dir, 'web.img');
    await writeFile(image, patternBytes(1024 * 1024, 5));
  });
  const tokenFile = async (name: string): Promise<string> => {
    const f = join(dir, `${name}.token`);
    await writeFile(f, `${secrets[name]}\n`, { mode: 0o600 });
    return f;
  };

  it('backs up with a write token, is refused (exit 11) for another disk or without a token', async () => {
    const env = { BLOCKREP_CACHE_DIR: join(dir, 'cli-cache') };
    const ok = await runCli(['backup', image, '--repo', server.url, '--token-file', await tokenFile('web-writer'), '--json'], { env });
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    const denied = await runCli(['backup', image, '--disk', 'db', '--repo', server.url, '--token-file', await tokenFile('web-writer'), '--json'], { env });
    expect([denied.code, denied.json.code]).toEqual([11, 'FORBIDDEN']);
    const none = await runCli(['list', '--repo', server.url, '--json'], { env: { ...env, BLOCKREP_TOKEN: '' } });
    expect([none.code, none.json.code]).toEqual([11, 'UNAUTHORIZED']);
    const viaEnv = await runCli(['list', '--repo', server.url, '--json'], { env: { ...env, BLOCKREP_TOKEN: secrets['web-reader']! } });
    expect(viaEnv.code).toBe(0);
    expect(viaEnv.json.disks.map((d: { disk: string }) => d.disk)).toEqual(['web']);
  });

  it('picks up revoked and new tokens without a restart', async () => {
    const t = secrets['vm1-reader'];
    expect((await as(t, 'GET', '/v1/config')).status).toBe(200);
    const revoked = await runCli(['token', 'revoke', '--tokens', tokensFile, 'vm1-reader']);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect((await as(t, 'GET', '/v1/config')).status).toBe(401);
    const made = await runCli(['token', 'create', '--tokens', tokensFile, '--name', 'late', '--disks', 'vm1,web', '--rights', 'read', '--json']);
    expect(made.code, made.stderr).toBe(0);
    expect(made.json.token).toEqual({ name: 'late', disks: ['vm1', 'web'], rights: ['read'], created: expect.any(String) });
    expect((await as(made.json.secret, 'GET', enc(Repository.manifestKey('vm1/vda', V1)))).status).toBe(200);
    // A file broken while the server runs shuts everyone out (503) until it is fixed.
    const good = await readFile(tokensFile, 'utf8');
    await writeFile(tokensFile, '{"format":');
    const broken = await as(secrets.admin, 'GET', '/v1/config');
    expect([broken.status, broken.json.code]).toEqual([503, 'UNAVAILABLE']);
    await writeFile(tokensFile, good);
    expect((await as(secrets.admin, 'GET', '/v1/config')).status).toBe(200);
  });

  it('token list shows names, disks and rights but no secret or hash; refusals are usage errors', async () => {
    const text = await runCli(['token', 'list', '--tokens', tokensFile]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^admin\s+read,write,admin\s+\*/m);
    const json = await runCli(['token', 'list', '--tokens', tokensFile, '--json']);
    expect(json.json.tokens.map((t: { name: string }) => t.name)).toEqual(['admin', 'web-reader', 'web-writer', 'pusher', 'late']);
    expect(json.stdout).not.toMatch(/hash|brt_/);
    expect((await runCli(['token', 'revoke', '--tokens', tokensFile, 'nobody'])).code).toBe(3);
    expect((await runCli(['token', 'create', '--tokens', tokensFile, '--name', 'admin', '--disks', '*', '--rights', 'read'])).code).toBe(2);
    expect((await runCli(['token', 'create', '--tokens', tokensFile, '--name', 'x', '--disks', '../etc', '--rights', 'read'])).code).toBe(2);
    expect((await runCli(['token', 'create', '--tokens', tokensFile, '--name', 'x', '--disks', 'web', '--rights', 'root'])).code).toBe(2);
  });

  it('never logs a secret; logs token names', () => {
    const log = server.stderr();
    for (const s of Object.values(secrets)) expect(log).not.toContain(s);
    expect(log).toMatch(/ token=web-writer( |$)/m);
    expect(log).toMatch(/ 401 .*token=- code=UNAUTHORIZED/);
  });
});

describe('starting the server', () => {
  it('refuses a non-loopback address without tokens, and says how to allow it', async () => {
    const r = await runCli(['serve', '--root', join(dir, 'open'), '--listen', '0.0.0.0:0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--tokens.*--insecure-no-auth/);
    const s = await startServer({ root: join(dir, 'open'), listen: '0.0.0.0:0', extraArgs: ['--insecure-no-auth'] });
    expect(s.url).toMatch(/^http:\/\/0\.0\.0\.0:\d+$/);
    await s.stop();
  });

  it('refuses a tokens file that is not one', async () => {
    const bad = join(dir, 'bad-tokens.json');
    await writeFile(bad, JSON.stringify({ format: 'blockrep-tokens', version: 1, tokens: [{ name: 'a', hash: 'secret!', disks: ['*'], rights: ['read'], created: 'x' }] }));
    const r = await runCli(['serve', '--root', join(dir, 'r2'), '--tokens', bad], { timeoutMs: 20_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/not a blockrep tokens file/);
  });
});

