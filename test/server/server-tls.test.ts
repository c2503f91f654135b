import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { patternBytes } from '../support/qemu-tools.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/** HTTPS with a self-signed certificate made here, trusted by the client only with --cacert. */
let dir: string;
let server: RunningTestServer;
let cert: string;

beforeAll(async () => {
  dir = await tempDir('blockrep-server-tls-');
  cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-keyout', key, '-out', cert,
  ]);
  server = await startServer({ root: join(dir, 'repo'), tls: { cert, key } });
});
afterAll(async () => {
  await server?.stop();
});

describe('blockrep serve over TLS', () => {
  it('prints an https URL and serves the CLI that pins its CA with --cacert', async () => {
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const image = join(dir, 'tls.img');
    await writeFile(image, patternBytes(512 * 1024, 9));
    const env = { BLOCKREP_CACHE_DIR: join(dir, 'cache') };
    const backup = await runCli(['backup', image, '--repo', server.url, '--cacert', cert, '--json'], { env });
    expect(backup.code, backup.stdout + backup.stderr).toBe(0);
    const out = join(dir, 'restored.img');
    const restore = await runCli(['restore', '--repo', server.url, '--cacert', cert, '--disk', 'tls', '--to', out], { env });
    expect(restore.code, restore.stderr).toBe(0);
    expect((await readFile(out)).equals(await readFile(image))).toBe(true);
  });

  it('refuses the server without the CA, at once (no retries), and never over plain http', async () => {
    const started = Date.now();
    const r = await runCli(['list', '--repo', server.url, '--json']);
    expect([r.code, r.json.code]).toEqual([1, 'IO']);
    expect(r.json.message).toMatch(/certificate is not trusted.*--cacert/);
    expect(r.json.message).not.toMatch(/attempts/);
    expect(Date.now() - started).toBeLessThan(5000);
    const plain = new HttpBackend({ url: server.url.replace('https:', 'http:'), retry: { attempts: 1 } });
    await expect(plain.size('blockrep.json')).rejects.toMatchObject({ code: expect.stringMatching(/UNAVAILABLE|IO/) });
    await plain.close();
    const usage = await runCli(['list', '--repo', server.url.replace('https:', 'http:'), '--cacert', cert]);
    expect(usage.code).toBe(2);
  });
});
