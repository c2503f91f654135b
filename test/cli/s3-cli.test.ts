import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli } from '../support/run-cli.js';
import { skipS3, startS3Server, type S3Server } from '../support/s3-server.js';

/**
 * The CLI with `--repo s3://BUCKET/PREFIX` against a real Ceph RGW, as a user runs it: the
 * commands, the request counts of `backup --json`, kill -9 in the middle of an upload, the
 * job configuration, and the answers to wrong keys, a missing bucket, an unreachable endpoint.
 */
let server: S3Server;
let dir: string;
let raw: S3Client;
let env: Record<string, string>;

async function randomImage(name: string, mib: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, randomBytes(mib * 1024 * 1024));
  return path;
}

async function chunkObjects(prefix: string): Promise<number> {
  let n = 0;
  let token: string | undefined;
  do {
    const page = await raw.send(new ListObjectsV2Command({ Bucket: server.bucket, Prefix: `${prefix}/chunks/`, ...(token ? { ContinuationToken: token } : {}) }));
    n += page.KeyCount ?? 0;
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return n;
}

describe.skipIf(skipS3)('blockrep with an s3:// repository (BLOCKREP_SKIP_S3_TESTS=1 skips)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blockrep-s3-cli-'));
    server = await startS3Server();
    env = { ...server.env, BLOCKREP_CACHE_DIR: join(dir, 'cache') };
    raw = new S3Client({ endpoint: server.endpoint, region: server.region, forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey } });
  });
  afterAll(async () => {
    raw?.destroy();
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('backs up, lists, verifies, restores, prunes and collects garbage; backup --json counts the requests', async () => {
    const repo = `s3://${server.bucket}/round-trip`;
    const image = await randomImage('disk.raw', 8);
    const first = await runCli(['backup', '--repo', repo, image, '--json'], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.json.disks[0]).toMatchObject({ newChunks: 32, reusedChunks: 0 });
    // A first backup into an empty prefix asks nothing per chunk: its listing says none is there.
    expect(first.json.requests).toMatchObject({ HEAD: 0, COPY: 0, GET: expect.any(Number), LIST: expect.any(Number) });
    expect(first.json.requests.PUT).toBeGreaterThanOrEqual(32 + 1);
    expect(first.json.requests.PUT).toBeLessThan(32 + 12);
    // A nightly run: two blocks changed.
    const data = await readFile(image);
    randomBytes(2 * 256 * 1024).copy(data, 3 * 256 * 1024);
    await writeFile(image, data);
    const second = await runCli(['backup', '--repo', repo, image, '--json'], { env });
    expect(second.code, second.stderr).toBe(0);
    expect(second.json.disks[0]).toMatchObject({ changedBlocks: 2, newChunks: 2 });
    expect(second.json.requests.PUT).toBeLessThan(2 + 12);
    // Text output says it too.
    const text = await runCli(['backup', '--repo', repo, image], { env });
    expect(text.stdout).toMatch(/requests: \d+ \(PUT \d+/);

    const list = await runCli(['list', '--repo', repo, '--json'], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.stringify(list.json)).toContain('disk');
    const verify = await runCli(['verify', '--repo', repo], { env });
    expect(verify.code, verify.stderr).toBe(0);
    const out = join(dir, 'restored.raw');
    const restore = await runCli(['restore', '--repo', repo, '--disk', 'disk', '--to', out], { env });
    expect(restore.code, restore.stderr).toBe(0);
    expect((await readFile(out)).equals(data)).toBe(true);
    const prune = await runCli(['prune', '--repo', repo, '--keep-last', '1', '--json'], { env });
    expect(prune.code, prune.stderr).toBe(0);
    const gc = await runCli(['gc', '--repo', repo, '--grace', '0', '--json'], { env });
    expect(gc.code, gc.stderr).toBe(0);
    expect(gc.json.chunksRemoved).toBe(2); // the first version's two blocks that changed
    expect((await runCli(['verify', '--repo', repo], { env })).code).toBe(0);
  });

  it('kill -9 in the middle of an upload: nothing half published; the next run sends only what the bucket lacks', async () => {
    const repo = `s3://${server.bucket}/killed`;
    const image = await randomImage('big.raw', 24);
    // Slowed down so that it is surely killed mid-upload.
    const run = spawnCli(['backup', '--repo', repo, image, '--bwlimit', '2M', '--json'], { env });
    const deadline = Date.now() + 60_000;
    while ((await chunkObjects('killed')) < 8 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    run.child.kill('SIGKILL');
    expect((await run.exit).code).toBe(137);
    const stored = await chunkObjects('killed');
    expect(stored).toBeGreaterThanOrEqual(8);
    expect(stored).toBeLessThan(96);
    const none = await runCli(['list', '--repo', repo, '--json'], { env });
    expect(JSON.stringify(none.json)).not.toMatch(/\d{8}T\d{6}/); // no version listed
    const again = await runCli(['backup', '--repo', repo, image, '--json'], { env });
    expect(again.code, again.stderr).toBe(0);
    const d = again.json.disks[0];
    expect(d.newChunks + d.reusedChunks).toBe(96);
    expect(d.reusedChunks).toBeGreaterThanOrEqual(stored - 1);
    expect(again.json.requests.PUT).toBeLessThan(96 - stored + 12);
    expect((await runCli(['verify', '--repo', repo], { env })).code).toBe(0);
    const list = await runCli(['list', '--repo', repo, '--json'], { env });
    expect(JSON.stringify(list.json).match(/\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}/g)?.length).toBeGreaterThanOrEqual(1);
  });

  it('gc --grace 0 over and over beside a backup that needs the chunks of a killed run: never a version with a missing chunk', async () => {
    const repo = `s3://${server.bucket}/gc-race`;
    const first = await randomImage('race-first.raw', 12);
    const killed = spawnCli(['backup', '--repo', repo, first, '--disk', 'race', '--bwlimit', '4M', '--json'], { env });
    const deadline = Date.now() + 60_000;
    while ((await chunkObjects('gc-race')) < 24 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    killed.child.kill('SIGKILL');
    await killed.exit;
    // Garbage now: chunks no version uses. The next backup meets them only after 64 MiB of new
    // blocks, while gc runs again and again; its lock (the dead one taken over) does not protect
    // what was written before it.
    const image = join(dir, 'race.raw');
    await writeFile(image, Buffer.concat([randomBytes(64 * 1024 * 1024), (await readFile(first)).subarray(0, 6 * 1024 * 1024)]));
    const backup = spawnCli(['backup', '--repo', repo, image, '--disk', 'race', '--bwlimit', '6M', '--json'], { env });
    let done = false;
    void backup.exit.then(() => (done = true));
    let removed = 0;
    let gcs = 0;
    while (!done) {
      const gc = await runCli(['gc', '--repo', repo, '--grace', '0', '--json'], { env });
      expect(gc.code, gc.stderr).toBe(0);
      removed += gc.json.chunksRemoved;
      gcs++;
    }
    const result = await backup.exit;
    // Either published whole, or refused because a gc took a chunk it had touched.
    expect([0, 4], result.stderr).toContain(result.code);
    if (result.code !== 0) {
      expect(result.json.code).toBe('CHUNK_MISSING');
      expect((await runCli(['backup', '--repo', repo, image, '--disk', 'race'], { env })).code).toBe(0);
    }
    expect(gcs).toBeGreaterThan(1);
    const verify = await runCli(['verify', '--repo', repo, '--json'], { env });
    expect(verify.code, `${verify.stdout}${verify.stderr} (gc removed ${removed})`).toBe(0);
    const out = join(dir, 'race-restored.raw');
    expect((await runCli(['restore', '--repo', repo, '--disk', 'race', '--to', out], { env })).code).toBe(0);
    expect((await readFile(out)).equals(await readFile(image))).toBe(true);
  });

  it('takes the endpoint from --s3-endpoint and from the job configuration', async () => {
    const image = await randomImage('job.raw', 1);
    const { AWS_ENDPOINT_URL: endpoint, ...withoutEndpoint } = env;
    const viaFlag = await runCli(['backup', '--repo', `s3://${server.bucket}/flag`, '--s3-endpoint', endpoint!, image, '--json'], { env: { ...withoutEndpoint, AWS_ENDPOINT_URL: '' } });
    expect(viaFlag.code, viaFlag.stderr).toBe(0);
    const config = join(dir, 'job.yaml');
    await writeFile(config, `repository:\n  url: s3://${server.bucket}/job\n  s3: {endpoint: ${endpoint}}\nvms:\n  - name: offline\n    images: [${image}]\n`);
    const job = await runCli(['run', '--config', config, '--json'], { env: { ...withoutEndpoint, AWS_ENDPOINT_URL: '' } });
    expect(job.code, job.stderr).toBe(0);
    // The run report counts the whole run's requests, as backup --json does.
    expect(job.json.requests.PUT).toBeGreaterThanOrEqual(2);
    expect(job.json.requests).toMatchObject({ GET: expect.any(Number), LIST: expect.any(Number) });
    const listed = await runCli(['list', '--repo', `s3://${server.bucket}/job`, '--json'], { env });
    expect(JSON.stringify(listed.json)).toContain('offline/job');
    const bad = await runCli(['list', '--repo', `s3://${server.bucket}/job`, '--s3-endpoint', 'ftp://x'], { env });
    expect(bad.code).toBe(2);
  });

  it('answers wrong keys with access denied (11), a missing bucket with not found (3) and how to create it, an unreachable endpoint with 12', async () => {
    const repo = `s3://${server.bucket}/errors`;
    const image = await randomImage('e.raw', 1);
    const wrong = await runCli(['backup', '--repo', repo, image], { env: { ...env, AWS_SECRET_ACCESS_KEY: 'wrong' } });
    expect(wrong.code).toBe(11);
    expect(wrong.stderr).toContain('access denied');
    const missing = await runCli(['backup', '--repo', 's3://no-such-bucket/x', image, '--json'], { env });
    expect(missing.code).toBe(3);
    expect(missing.json).toMatchObject({ code: 'REPO_NOT_FOUND', message: expect.stringContaining('aws s3 mb s3://no-such-bucket') });
    const started = Date.now();
    const down = await runCli(['list', '--repo', repo, '--s3-endpoint', 'http://127.0.0.1:9', '--json'], { env: { ...env, AWS_MAX_ATTEMPTS: '3' } });
    expect(down.code).toBe(12);
    expect(down.json).toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('after 3 tries') });
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});
