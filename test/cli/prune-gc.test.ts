import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { backupImage } from '../../src/app/backup-image.js';
import { collectGarbage, type GcReport } from '../../src/app/collect-garbage.js';
import { pruneVersions } from '../../src/app/prune-versions.js';
import { restoreVersion } from '../../src/app/restore-version.js';
import { verifyRepository } from '../../src/app/verify-repository.js';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { Repository } from '../../src/repository/repository.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer } from '../support/blockrep-server.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * prune and gc through the CLI against a repository in a directory and behind a real
 * `blockrep serve` (with an admin token; a writer token and an admin token without read are
 * refused), and the concurrency proof: a backup (a separate blockrep process, slowed by
 * --bwlimit) that reuses chunks of a pruned version while gc runs again and again with no
 * grace; afterwards every version verifies and restores bit-exact.
 */
const KiB = 1024;
const BLOCK = 64 * KiB;
const IMAGE_BYTES = 64 * BLOCK; // 4 MiB, 64 blocks
const HOUR_AGO = () => new Date(Date.now() - 3600_000);
const BIN = fileURLToPath(new URL('../../bin/blockrep.js', import.meta.url));

interface Kind {
  name: 'local' | 'http';
  root: string;
  /** CLI arguments for the admin (or, local, the only) user. */
  args: string[];
  env: Record<string, string>;
  /** http only: --repo and --token-file of tokens with less than read+admin on "*". */
  writerArgs?: string[];
  adminNoReadArgs?: string[];
  /** http only: a client with a read-only token. */
  reader?: HttpBackend;
  /** In-process repository, as the admin. */
  repo: Repository;
}

const dir = await tempDir('blockrep-prune-gc-');
// The in-process HTTP client's manifest cache stays with the test, not in ~/.cache.
process.env.BLOCKREP_CACHE_DIR = join(dir, 'cache');
const opened: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const close of opened) await close();
});

async function openKind(name: 'local' | 'http', label: string): Promise<Kind> {
  const root = join(dir, `${label}-${name}`, 'repo');
  await mkdir(root, { recursive: true });
  if (name === 'local') {
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    opened.push(() => repo.backend.close());
    return { name, root, args: ['--repo', root], env: {}, repo };
  }
  const base = join(dir, `${label}-${name}`);
  const tokensFile = join(base, 'tokens.json');
  const tokenArgs = async (tokenName: string, rights: Array<'read' | 'write' | 'admin'>): Promise<string> => {
    const { secret } = await createToken(tokensFile, { name: tokenName, disks: ['*'], rights });
    await writeFile(join(base, tokenName), `${secret}\n`, { mode: 0o600 });
    return secret;
  };
  const adminSecret = await tokenArgs('admin', ['read', 'write', 'admin']);
  await tokenArgs('writer', ['read', 'write']);
  await tokenArgs('admin-no-read', ['write', 'admin']);
  const readerSecret = await tokenArgs('reader', ['read']);
  const server = await startServer({ root, tokensFile });
  opened.push(() => server.stop());
  const repo = await Repository.open(new HttpBackend({ url: server.url, token: adminSecret }));
  opened.push(() => repo.backend.close());
  const reader = new HttpBackend({ url: server.url, token: readerSecret });
  opened.push(() => reader.close());
  const env = { BLOCKREP_CACHE_DIR: join(base, 'cache') };
  return {
    name,
    root,
    args: ['--repo', server.url, '--token-file', join(base, 'admin')],
    env,
    writerArgs: ['--repo', server.url, '--token-file', join(base, 'writer')],
    adminNoReadArgs: ['--repo', server.url, '--token-file', join(base, 'admin-no-read')],
    reader,
    repo,
  };
}

/** An image whose blocks are given by `fill(block)` (a Buffer of BLOCK bytes, or undefined for zeros). */
async function writeImage(path: string, fill: (block: number) => Buffer | undefined): Promise<Buffer> {
  const image = Buffer.alloc(IMAGE_BYTES);
  for (let b = 0; b < IMAGE_BYTES / BLOCK; b++) fill(b)?.copy(image, b * BLOCK);
  await writeFile(path, image);
  return image;
}

async function chunkFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of await readdir(join(root, 'chunks')).catch(() => [])) {
    for (const name of await readdir(join(root, 'chunks', sub))) if (!name.startsWith('.')) out.push(join(root, 'chunks', sub, name));
  }
  return out;
}

async function backdateChunks(root: string): Promise<void> {
  const old = HOUR_AGO();
  for (const file of await chunkFiles(root)) await utimes(file, old, old);
}

async function restoredBytes(kind: Kind, disk: string, version: string, to: string): Promise<Buffer> {
  await restoreVersion(kind.repo, { diskId: disk, version, to, format: 'raw', force: true });
  return readFile(to);
}

describe.each(['local', 'http'] as const)('prune and gc (%s)', (kindName) => {
  it('prune keeps what the policy says, dry run first; a disk a backup holds is skipped (exit 5); gc frees the pruned chunks', async () => {
    const kind = await openKind(kindName, 'cli');
    const image = join(kind.root, '..', 'disk.img');
    // Three versions of "web" (each block 0..7 new), two of "db".
    const contents: Buffer[] = [];
    for (let v = 0; v < 3; v++) {
      contents.push(await writeImage(image, (b) => (b < 8 ? Buffer.alloc(BLOCK, 16 * v + b + 1) : b === 40 ? Buffer.alloc(BLOCK, 0xee) : undefined)));
      await backupImage(kind.repo, { path: image, diskId: 'web', blockSize: BLOCK });
    }
    for (let v = 0; v < 2; v++) {
      await writeImage(image, (b) => (b === 3 ? Buffer.alloc(BLOCK, 200 + v) : undefined));
      await backupImage(kind.repo, { path: image, diskId: 'db', blockSize: BLOCK });
    }
    const web = await kind.repo.listVersions('web');
    const db = await kind.repo.listVersions('db');
    expect(web).toHaveLength(3);

    const dry = await runCli(['prune', ...kind.args, '--keep-last', '2', '--dry-run', '--json'], { env: kind.env });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.json.dryRun).toBe(true);
    expect(dry.json.disks.find((d: { disk: string }) => d.disk === 'web').removed.map((r: { version: string }) => r.version)).toEqual([web[0]]);
    expect(dry.json.versionsRemoved).toBe(1);
    expect(await kind.repo.listVersions('web')).toEqual(web);

    // A backup holds db's lock: db is left alone and said to be, web is pruned.
    const lock = await kind.repo.lockDisk('db', 'backup');
    const locked = await runCli(['prune', ...kind.args, '--keep-last', '1', '--json'], { env: kind.env });
    await lock.release();
    expect(locked.code, locked.stdout).toBe(5);
    expect(locked.json.code).toBe('REPO_LOCKED');
    expect(locked.json.disks.find((d: { disk: string }) => d.disk === 'db').skipped.code).toBe('REPO_LOCKED');
    expect(locked.json.disks.find((d: { disk: string }) => d.disk === 'web').kept).toEqual([{ version: web[2], createdAt: expect.any(String), reasons: ['latest', 'last'] }]);
    expect(await kind.repo.listVersions('web')).toEqual([web[2]]);
    expect(await kind.repo.listVersions('db')).toEqual(db);

    const text = await runCli(['prune', ...kind.args, '--disk', 'db', '--keep-daily', '1'], { env: kind.env });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`${db[0]}  removed`);
    expect(text.stdout).toContain(`${db[1]}  keep    latest, daily`);
    expect(await kind.repo.listVersions('db')).toEqual([db[1]]);

    if (kind.name === 'local') expect((await runCli(['prune', ...kind.args], { env: kind.env })).code).toBe(2); // no policy

    // gc. The pruned versions' chunks are unused: web's blocks 0..7 of versions 1 and 2, db's
    // block 3 of version 1. Made an hour ago (backdated): the default grace (a day) keeps them.
    const before = (await chunkFiles(kind.root)).length;
    await backdateChunks(kind.root);
    const [young, dryGc] = await Promise.all([
      runCli(['gc', ...kind.args, '--json'], { env: kind.env }),
      runCli(['gc', ...kind.args, '--grace', '0', '--dry-run', '--json'], { env: kind.env }),
    ]);
    expect(young.code, young.stderr).toBe(0);
    expect(young.json).toMatchObject({ ok: true, chunksRemoved: 0, chunksKeptYoung: 17, chunksReferenced: before - 17, versions: 2, disks: 2 });
    expect(dryGc.json).toMatchObject({ dryRun: true, chunksRemoved: 17, bytesRemoved: 17 * 32 });
    expect(await chunkFiles(kind.root)).toHaveLength(before);

    // Leftovers of processes killed with -9: a stale temp file (removed), a fresh one (a write
    // in progress: kept), and a used chunk a killed gc had moved aside (put back).
    const stale = join(kind.root, 'chunks', '00', '.tmp-0123456789abcdef');
    await mkdir(join(kind.root, 'chunks', '00'), { recursive: true });
    await writeFile(stale, Buffer.alloc(1000));
    await utimes(stale, HOUR_AGO(), HOUR_AGO());
    const fresh = join(kind.root, 'chunks', '00', '.tmp-fedcba9876543210');
    await writeFile(fresh, Buffer.alloc(10));

    const gc = await runCli(['gc', ...kind.args, '--grace', '10m'], { env: kind.env });
    expect(gc.code, gc.stderr).toBe(0);
    expect(gc.stdout).toMatch(/removed 17 unused chunks .* and 1 stale temporary files \(1000 B\)/);
    expect(await chunkFiles(kind.root)).toHaveLength(before - 17);
    await expect(stat(stale)).rejects.toThrow();
    await stat(fresh);

    // What is left verifies and restores bit-exact.
    expect((await verifyRepository(kind.repo, {})).damage).toEqual([]);
    expect((await restoredBytes(kind, 'web', web[2]!, join(kind.root, '..', 'web.raw'))).equals(contents[2]!)).toBe(true);

    if (kind.writerArgs && kind.adminNoReadArgs) {
      // Deleting versions needs admin on the disk; gc needs read and admin on "*".
      await writeImage(image, (b) => (b === 5 ? Buffer.alloc(BLOCK, 99) : undefined));
      await backupImage(kind.repo, { path: image, diskId: 'db', blockSize: BLOCK });
      // A token that cannot read sees no versions: it must not remove the chunks they use.
      await backdateChunks(kind.root);
      const count = (await chunkFiles(kind.root)).length;
      const [writerPrune, writerGc, blind] = await Promise.all([
        runCli(['prune', ...kind.writerArgs, '--keep-last', '1', '--json'], { env: kind.env }),
        runCli(['gc', ...kind.writerArgs, '--grace', '0', '--json'], { env: kind.env }),
        runCli(['gc', ...kind.adminNoReadArgs, '--grace', '0', '--json'], { env: kind.env }),
      ]);
      expect([writerPrune.code, writerPrune.json.code]).toEqual([11, 'FORBIDDEN']);
      expect(await kind.repo.listVersions('db')).toHaveLength(2);
      expect([writerGc.code, writerGc.json.code]).toEqual([11, 'FORBIDDEN']);
      expect([blind.code, blind.json.code]).toEqual([11, 'FORBIDDEN']);
      expect(await chunkFiles(kind.root)).toHaveLength(count);
      expect((await verifyRepository(kind.repo, {})).ok).toBe(true);
      // Touching (a dedup hit) serves writing: a read-only token may ask, not touch.
      const someChunk = `chunks/${(await chunkFiles(kind.root))[0]!.split('/').slice(-2).join('/')}`;
      expect(await kind.reader!.sizes([someChunk])).toEqual([expect.any(Number)]);
      await expect(kind.reader!.sizes([someChunk], { touch: true })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    }
  });

  it('backup and gc at once, repeated: chunks of a pruned version reused by a running backup survive a gc with no grace', async () => {
    const kind = await openKind(kindName, 'race');
    const image = join(kind.root, '..', 'disk.img');
    const ROUNDS = 3;
    let removedWhileRunning = 0;
    let gcRuns = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const bait = Array.from({ length: 16 }, () => randomBytes(BLOCK));
      const junk = Array.from({ length: 16 }, () => randomBytes(BLOCK));
      const stay = Array.from({ length: 8 }, () => randomBytes(BLOCK));
      // X: blocks 0..15 "bait", 16..31 junk. Y: bait and junk gone. Prune X away: bait and junk
      // are now garbage; backdated, they are old enough for any gc.
      await writeImage(image, (b) => (b < 16 ? bait[b] : b < 32 ? junk[b - 16] : b < 40 ? stay[b - 32] : undefined));
      await backupImage(kind.repo, { path: image, diskId: 'race', blockSize: BLOCK });
      const yImage = await writeImage(image, (b) => (b >= 32 && b < 40 ? stay[b - 32] : undefined));
      const y = await backupImage(kind.repo, { path: image, diskId: 'race', blockSize: BLOCK });
      const pruned = await pruneVersions(kind.repo, { disks: ['race'], policy: { keepLast: 1 } });
      expect(pruned.versionsRemoved).toBeGreaterThan(0);
      await backdateChunks(kind.root);

      // Z, in its own process, slowed to ~1 MiB/s: bait again (found present: dedup hits on
      // garbage, asked about first) and 512 KiB of new data uploaded after that question.
      const fresh = Array.from({ length: 8 }, () => randomBytes(BLOCK));
      const expected = await writeImage(image, (b) => (b < 16 ? bait[b] : b < 32 ? undefined : b < 40 ? stay[b - 32] : b < 48 ? fresh[b - 40] : undefined));
      const backup = runBlockrep(['backup', image, ...kind.args, '--disk', 'race', '--bwlimit', '1M', '--json'], kind.env);
      const reports: GcReport[] = [];
      // Once Z has asked which of its chunks the repository holds (its first upload, which
      // follows that question, has landed), gc again and again, no grace, until it has finished.
      const freshFiles = fresh.map((b) => {
        const id = createHash('sha256').update(b).digest('hex');
        return join(kind.root, 'chunks', id.slice(0, 2), id);
      });
      while (!backup.done && !(await anyExists(freshFiles))) await new Promise((r) => setTimeout(r, 5));
      while (!backup.done) {
        reports.push(await collectGarbage(kind.repo, { graceMs: 0 }));
        gcRuns++;
      }
      const result = await backup.result;
      expect(result.code, result.stdout + result.stderr).toBe(0);
      const z = JSON.parse(result.stdout) as { disks: Array<{ version: string; reusedChunks: number }> };
      expect(z.disks[0]!.reusedChunks).toBe(16); // the bait: dedup hits on garbage chunks
      const removed = reports.reduce((n, r) => n + r.chunksRemoved, 0);
      expect(removed).toBeGreaterThanOrEqual(16); // the junk went while the backup ran
      removedWhileRunning += removed;
      expect(reports.length).toBeGreaterThanOrEqual(1); // gc ran while the backup did
      expect(reports.some((r) => r.cutoffHeldBy?.lock === 'locks/race.lock')).toBe(true);

      // Every version (Y and Z) verifies and restores bit-exact.
      const verify = await verifyRepository(kind.repo, {});
      expect(verify.damage).toEqual([]);
      expect(await kind.repo.listVersions('race')).toEqual([y.version, z.disks[0]!.version]);
      expect((await restoredBytes(kind, 'race', y.version, join(kind.root, '..', 'y.raw'))).equals(yImage)).toBe(true);
      expect((await restoredBytes(kind, 'race', z.disks[0]!.version, join(kind.root, '..', 'z.raw'))).equals(expected)).toBe(true);
    }
    expect(removedWhileRunning).toBeGreaterThanOrEqual(16 * ROUNDS);
    expect(gcRuns).toBeGreaterThanOrEqual(ROUNDS);
  });
});

it('a killed gc leaves a chunk moved aside: the next gc puts it back (the server runs the same LocalBackend code)', async () => {
  const kind = await openKind('local', 'aside');
  const image = join(kind.root, '..', 'disk.img');
  const content = await writeImage(image, (b) => (b < 4 ? Buffer.alloc(BLOCK, b + 1) : undefined));
  const { version } = await backupImage(kind.repo, { path: image, diskId: 'vm/vda', blockSize: BLOCK });
  const [file] = await chunkFiles(kind.root);
  const name = file!.split('/').pop()!;
  await rename(file!, join(file!, '..', `.tmp-gc-${name}-${randomBytes(8).toString('hex')}`));
  expect((await verifyRepository(kind.repo, {})).ok).toBe(false);
  const report: GcReport = await collectGarbage(kind.repo, { graceMs: 0 });
  expect(report.chunksRemoved).toBe(0);
  expect((await verifyRepository(kind.repo, {})).ok).toBe(true);
  expect((await restoredBytes(kind, 'vm/vda', version, join(kind.root, '..', 'r.raw'))).equals(content)).toBe(true);
});

/** A blockrep CLI process whose end the caller can poll. */
function runBlockrep(args: string[], env: Record<string, string>): { done: boolean; result: Promise<{ code: number; stdout: string; stderr: string }> } {
  const handle = {
    done: false,
    result: new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
        handle.done = true;
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      });
    }),
  };
  return handle;
}

async function anyExists(paths: string[]): Promise<boolean> {
  for (const p of paths) if (await stat(p).then(() => true, () => false)) return true;
  return false;
}
