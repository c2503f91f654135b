import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import xxhash from 'xxhash-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { runCli, type CliResult } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The proof of client-side encryption, with the built CLI as a user runs it: against a local
 * folder and a real `blockrep serve` on loopback, nothing stored (content or name) holds the
 * plaintext of a block, its SHA-256 or its xxHash64; restores are bit-exact with the passphrase;
 * every way of getting at it wrongly is its own clear error, and nothing wrong is restored.
 */
const KiB = 1024;
const BLOCK = 64 * KiB;
const BLOCKS = 24;
const PASS = 'correct horse battery staple';
let dir: string;
let image: string;
let blocks: Buffer[];

/** Known blocks: half compressible text-like, half random; each starts with a marker of its own. */
function knownBlocks(): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < BLOCKS; i++) {
    const b = i % 2 === 0 ? Buffer.from(`secret payroll row ${i} `.repeat(BLOCK / 16).slice(0, BLOCK)) : randomBytes(BLOCK);
    Buffer.from(`KNOWN-PLAINTEXT-BLOCK-${String(i).padStart(4, '0')}`).copy(b, 0);
    out.push(b);
  }
  return out;
}

async function filesUnder(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

/** Every needle that would betray a block: plaintext pieces, its SHA-256 (raw, hex), its xxHash64 (both byte orders, hex). */
async function needles(): Promise<Array<{ what: string; bytes: Buffer }>> {
  const { h64Raw } = await xxhash();
  const out: Array<{ what: string; bytes: Buffer }> = [];
  blocks.forEach((b, i) => {
    out.push({ what: `block ${i} plaintext head`, bytes: b.subarray(0, 32) });
    out.push({ what: `block ${i} plaintext middle`, bytes: b.subarray(BLOCK / 2, BLOCK / 2 + 32) });
    const sha = createHash('sha256').update(b).digest();
    out.push({ what: `block ${i} sha256`, bytes: sha }, { what: `block ${i} sha256 hex`, bytes: Buffer.from(sha.toString('hex')) });
    const xx = Buffer.alloc(8);
    xx.writeBigUInt64BE(h64Raw(b, 0n));
    out.push({ what: `block ${i} xxh64 BE`, bytes: Buffer.from(xx) }, { what: `block ${i} xxh64 LE`, bytes: Buffer.from(xx).reverse() }, { what: `block ${i} xxh64 hex`, bytes: Buffer.from(xx.toString('hex')) });
  });
  out.push({ what: 'the passphrase', bytes: Buffer.from(PASS) });
  return out;
}

async function expectNothingLeaks(root: string): Promise<number> {
  const files = await filesUnder(root);
  const all = await needles();
  for (const file of files) {
    const content = await readFile(file);
    const name = Buffer.from(relative(root, file));
    for (const n of all) {
      expect(content.includes(n.bytes), `${n.what} in ${relative(root, file)}`).toBe(false);
      expect(name.includes(n.bytes), `${n.what} in the name ${relative(root, file)}`).toBe(false);
    }
  }
  return files.length;
}

const withPass = (pass = PASS): Record<string, string> => ({ BLOCKREP_PASSWORD: pass });
const noPass = { BLOCKREP_PASSWORD: '' };

function expectError(r: CliResult, code: string, exit: number): void {
  expect(r.json?.code, r.stdout + r.stderr).toBe(code);
  expect(r.code).toBe(exit);
}

beforeAll(async () => {
  dir = await tempDir('blockrep-crypt-');
  blocks = knownBlocks();
  image = join(dir, 'disk.raw');
  await writeFile(image, Buffer.concat(blocks));
});

/** Runs the same proof against a repository REPO whose files are under `root`. */
function proof(kind: string, setup: () => Promise<{ repo: string; root: string }>): void {
  describe(kind, () => {
    let repo: string;
    let root: string;
    let version: string;
    const restoreTo = (name: string, env = withPass(), extra: string[] = []): Promise<CliResult> =>
      runCli(['restore', '--repo', repo, '--disk', 'disk', '--to', join(dir, name), '--json', ...extra], { env });

    beforeAll(async () => {
      ({ repo, root } = await setup());
      const init = await runCli(['init', '--repo', repo, '--encrypt', '--json'], { env: withPass() });
      expect(init.code, init.stderr).toBe(0);
      const b = await runCli(['backup', image, '--repo', repo, '--block-size', String(BLOCK), '--json'], { env: withPass() });
      expect(b.code, b.stdout + b.stderr).toBe(0);
      version = b.json.disks[0].version;
    });

    it('stores neither the plaintext, nor its SHA-256, nor its xxHash64, anywhere', async () => {
      expect(await expectNothingLeaks(root)).toBeGreaterThan(BLOCKS);
      // And a plain repository would have: the search can fail.
      const plain = join(dir, `${kind}-plain`);
      expect((await runCli(['backup', image, '--repo', plain, '--block-size', String(BLOCK), '--json'])).code).toBe(0);
      await expect(expectNothingLeaks(plain)).rejects.toThrow(/sha256|xxh64|plaintext/);
    });

    it('restores bit-exact with the passphrase; verify opens every chunk', async () => {
      const r = await restoreTo(`${kind}-ok.raw`);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect((await readFile(join(dir, `${kind}-ok.raw`))).equals(await readFile(image))).toBe(true);
      const v = await runCli(['verify', '--repo', repo, '--json'], { env: withPass() });
      expect(v.json).toMatchObject({ ok: true, scope: 'content', chunksChecked: BLOCKS });
    });

    it('refuses a wrong passphrase (14) and a missing one (15); nothing is restored', async () => {
      expectError(await restoreTo(`${kind}-wrong.raw`, withPass('not it')), 'WRONG_PASSWORD', 14);
      expectError(await restoreTo(`${kind}-none.raw`, noPass), 'KEY_REQUIRED', 15);
      expectError(await runCli(['backup', image, '--repo', repo, '--json'], { env: noPass }), 'KEY_REQUIRED', 15);
      expectError(await runCli(['list', '--repo', repo, '--json'], { env: withPass('not it') }), 'WRONG_PASSWORD', 14);
      expect(existsSync(join(dir, `${kind}-wrong.raw`)) || existsSync(join(dir, `${kind}-none.raw`))).toBe(false);
    });

    it('names a tampered chunk, two swapped chunks, and a manifest from another disk or version (4); nothing wrong is restored', async () => {
      const chunks = (await filesUnder(join(root, 'chunks'))).sort();
      const [a, b] = [chunks[0]!, chunks[1]!];
      const [origA, origB] = [await readFile(a), await readFile(b)];
      // A flipped bit.
      const flipped = Buffer.from(origA);
      flipped[flipped.length - 40]! ^= 1;
      await writeFile(a, flipped);
      let r = await restoreTo(`${kind}-flip.raw`);
      expectError(r, 'CHUNK_CORRUPT', 4);
      expect(r.json.message).toContain(a.slice(a.lastIndexOf('/') + 1));
      const v = await runCli(['verify', '--repo', repo, '--json'], { env: withPass() });
      expect(v.code).toBe(4);
      expect(v.json.damage.map((d: { chunk: string }) => d.chunk)).toContain(a.slice(a.lastIndexOf('/') + 1));
      // Two chunks swapped (each well formed, under the other's name).
      await writeFile(a, origB);
      await writeFile(b, origA);
      r = await restoreTo(`${kind}-swap.raw`);
      expectError(r, 'CHUNK_CORRUPT', 4);
      // verify without the key cannot see a swap (both envelopes are well formed), and says what it checked.
      const keyless = await runCli(['verify', '--repo', repo, '--without-key', '--json'], { env: noPass });
      expect(keyless.json).toMatchObject({ ok: true, scope: 'envelopes' });
      await writeFile(a, origA);
      await writeFile(b, origB);
      // A manifest from another disk, stored as a newer version of this one.
      const other = join(dir, 'other.raw');
      await writeFile(other, randomBytes(4 * BLOCK));
      const ob = await runCli(['backup', other, '--repo', repo, '--block-size', String(BLOCK), '--json'], { env: withPass() });
      expect(ob.code, ob.stderr).toBe(0);
      const foreign = join(root, 'disks', 'other', `${ob.json.disks[0].version}.manifest`);
      const planted = join(root, 'disks', 'disk', '29991231T235959.999Z-000000.manifest');
      await copyFile(foreign, planted);
      r = await restoreTo(`${kind}-foreign.raw`);
      expectError(r, 'REPO_CORRUPT', 4);
      expect(r.json.message).toMatch(/copied from another disk or version/);
      // This disk's own older manifest under a newer version's name (a replay).
      await copyFile(join(root, 'disks', 'disk', `${version}.manifest`), planted);
      expectError(await restoreTo(`${kind}-replay.raw`), 'REPO_CORRUPT', 4);
      await rename(planted, join(dir, `${kind}-removed.manifest`));
      for (const name of ['flip', 'swap', 'foreign', 'replay']) expect(existsSync(join(dir, `${kind}-${name}.raw`)), name).toBe(false);
      expect((await restoreTo(`${kind}-after.raw`)).code).toBe(0);
    });

    it('verify without the key checks envelopes and sizes only, and finds a cut chunk', async () => {
      const chunk = (await filesUnder(join(root, 'chunks'))).sort()[2]!;
      const orig = await readFile(chunk);
      await writeFile(chunk, orig.subarray(0, 30));
      const r = await runCli(['verify', '--repo', repo, '--without-key'], { env: noPass });
      expect(r.code).toBe(4);
      expect(r.stdout).toMatch(/checked without the key: only the form and size/);
      await writeFile(chunk, orig);
    });

    it('two passphrases: removing one leaves the other; after every passphrase is gone, the exported key restores', async () => {
      const second = 'a second, different passphrase';
      const add = await runCli(['key', 'add', '--repo', repo, '--json'], { env: { ...withPass(), BLOCKREP_NEW_PASSWORD: second } });
      expect(add.code, add.stdout + add.stderr).toBe(0);
      const list = await runCli(['key', 'list', '--repo', repo, '--json'], { env: noPass });
      expect(list.json.keys).toHaveLength(2);
      const first = list.json.keys.find((k: { id: string }) => k.id !== add.json.key).id;
      const rm1 = await runCli(['key', 'remove', first, '--repo', repo, '--json'], { env: withPass(second) });
      expect(rm1.code, rm1.stdout).toBe(0);
      expectError(await restoreTo(`${kind}-removed.raw`), 'WRONG_PASSWORD', 14);
      expect((await restoreTo(`${kind}-second.raw`, withPass(second))).code).toBe(0);
      // Export, then remove the last key: only the export opens the repository.
      const exported = join(dir, `${kind}-master.json`);
      expect((await runCli(['key', 'export', '--repo', repo, '--out', exported], { env: withPass(second) })).code).toBe(0);
      expectError(await runCli(['key', 'remove', add.json.key, '--repo', repo, '--json'], { env: withPass(second) }), 'USAGE', 2);
      expect((await runCli(['key', 'remove', add.json.key, '--repo', repo, '--force', '--json'], { env: withPass(second) })).code).toBe(0);
      expectError(await restoreTo(`${kind}-nokeys.raw`, withPass(second)), 'WRONG_PASSWORD', 14);
      const third = 'the passphrase after recovery';
      const back = await runCli(['key', 'add', '--repo', repo, '--from-export', exported, '--json'], { env: { ...noPass, BLOCKREP_NEW_PASSWORD: third } });
      expect(back.code, back.stdout + back.stderr).toBe(0);
      const r = await restoreTo(`${kind}-recovered.raw`, withPass(third));
      expect(r.code, r.stdout).toBe(0);
      expect((await readFile(join(dir, `${kind}-recovered.raw`))).equals(await readFile(image))).toBe(true);
      // The master key itself is nowhere in the repository either.
      const master = Buffer.from(JSON.parse(await readFile(exported, 'utf8')).masterKey, 'hex');
      for (const f of await filesUnder(root)) expect((await readFile(f)).includes(master), f).toBe(false);
    });
  });
}

proof('local', async () => ({ repo: join(dir, 'local-repo'), root: join(dir, 'local-repo') }));

let server: RunningTestServer | undefined;
afterAll(async () => {
  await server?.stop();
});
proof('server', async () => {
  const root = join(dir, 'served');
  server = await startServer({ root });
  return { repo: server.url, root };
});

it('blockrep run backs up into an encrypted repository with the passphrase file its config names, and fails without it', async () => {
  const repo = join(dir, 'run-repo');
  expect((await runCli(['init', '--repo', repo, '--encrypt', '--json'], { env: withPass() })).code).toBe(0);
  const passFile = join(dir, 'passphrase');
  await writeFile(passFile, `${PASS}\n`, { mode: 0o600 });
  const config = join(dir, 'job.yaml');
  await writeFile(config, `repository:\n  url: ${repo}\n  passwordFile: ${passFile}\nvms:\n  - name: offline\n    images: [${image}]\n`);
  const ok = await runCli(['run', '--config', config, '--json'], { env: noPass });
  expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  const restored = join(dir, 'run-restored.raw');
  const r = await runCli(['restore', '--repo', repo, '--disk', 'offline/disk', '--to', restored, '--json'], { env: withPass() });
  expect(r.code, r.stdout + r.stderr).toBe(0);
  expect((await readFile(restored)).equals(await readFile(image))).toBe(true);
  await expectNothingLeaks(repo);
  // Without a passphrase anywhere the run fails before it writes anything.
  await writeFile(config, `repository:\n  url: ${repo}\nvms:\n  - name: offline\n    images: [${image}]\n`);
  const without = await runCli(['run', '--config', config, '--json'], { env: noPass });
  expect(without.code).toBe(1);
  expect(JSON.stringify(without.json)).toContain('KEY_REQUIRED');
  const wrong = await runCli(['run', '--config', config, '--password-file', config, '--json'], { env: noPass });
  expect(JSON.stringify(wrong.json)).toContain('WRONG_PASSWORD');
});
