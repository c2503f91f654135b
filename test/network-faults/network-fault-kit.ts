import { randomBytes } from 'node:crypto';
import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { listVersions } from '../../src/app/list-versions.js';
import { verifyRepository } from '../../src/app/verify-repository.js';
import { openRepository } from '../../src/repository/open-repository.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { runCli, spawnCli, type CliResult, type SpawnedCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * A repository behind a real `blockrep serve` on loopback (restartable on the same port after a
 * kill -9), one raw image whose blocks a test rewrites, and the checks every fault test makes:
 * `list` shows only whole versions, `verify` passes, and what a re-run sends.
 */
export const BLOCK_BYTES = 64 * 1024;
export const IMAGE_BLOCKS = 64; // a 4 MiB image
export const DISK = 'vm1';
/** What a run sends besides chunks (the manifest delta): well under one chunk. */
export const NON_CHUNK_MARGIN = 32 * 1024;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FaultRig {
  server: RunningTestServer | undefined;
  /** Every server process started, for their request logs. */
  private readonly servers: RunningTestServer[] = [];
  private port = 0;
  /** Published versions, oldest first, as the tests expect them. */
  readonly versions: string[] = [];
  private seed = 1;

  private constructor(
    readonly dir: string,
    readonly root: string,
    readonly image: string,
    private readonly tokensFile: string,
    readonly tokenFile: string,
  ) {}

  static async create(prefix: string): Promise<FaultRig> {
    const dir = await tempDir(prefix);
    const tokensFile = join(dir, 'tokens.json');
    const tokenFile = join(dir, 'token');
    const { secret } = await createToken(tokensFile, { name: 'faults', disks: ['*'], rights: ['read', 'write'] });
    await writeFile(tokenFile, `${secret}\n`, { mode: 0o600 });
    // The in-process checks' manifest cache stays with the test.
    process.env.BLOCKREP_CACHE_DIR = join(dir, 'cache-checks');
    const image = join(dir, `${DISK}.raw`);
    await writeFile(image, randomBytes(IMAGE_BLOCKS * BLOCK_BYTES));
    const rig = new FaultRig(dir, join(dir, 'repo'), image, tokensFile, tokenFile);
    await rig.startServer();
    return rig;
  }

  get url(): string {
    if (!this.server) throw new Error('the server is not running');
    return this.server.url;
  }

  /** Starts the server; after the first start, on the same port (clients keep their URL). */
  async startServer(): Promise<void> {
    this.server = await startServer({ root: this.root, tokensFile: this.tokensFile, listen: `127.0.0.1:${this.port}` });
    this.servers.push(this.server);
    this.port = Number(new URL(this.server.url).port);
  }

  async killServer(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const exited = new Promise((r) => server.process.once('exit', r));
    server.process.kill('SIGKILL');
    await exited;
    await server.stop(); // forgets it
  }

  async stop(): Promise<void> {
    await this.server?.stop();
    this.server = undefined;
  }

  /** Where the servers' request logs are now: chunkUploadsSince() counts from here. */
  logMark(): number[] {
    return this.servers.map((s) => s.stderr().length);
  }

  /** The bytes of every chunk upload the servers stored (201) since `mark`, by their request logs. */
  chunkUploadsSince(mark: number[]): number[] {
    return this.servers.flatMap((s, i) => [...s.stderr().slice(mark[i] ?? 0).matchAll(/ PUT chunk 201 in=(\d+) /g)].map((m) => Number(m[1])));
  }

  backupArgs(url = this.url, extra: string[] = []): string[] {
    return ['backup', this.image, '--disk', DISK, '--block-size', '64K', '--repo', url, '--token-file', this.tokenFile, '--json', ...extra];
  }

  env(extra: Record<string, string> = {}): Record<string, string> {
    return { BLOCKREP_CACHE_DIR: join(this.dir, 'cache'), ...extra };
  }

  backup(options: { url?: string; extra?: string[]; env?: Record<string, string> } = {}): Promise<CliResult> {
    return runCli(this.backupArgs(options.url, options.extra), { env: this.env(options.env) });
  }

  spawnBackup(options: { url?: string; extra?: string[]; env?: Record<string, string> } = {}): SpawnedCli {
    return spawnCli(this.backupArgs(options.url, options.extra), { env: this.env(options.env) });
  }

  /** Rewrites `count` distinct blocks with random bytes (every one a new chunk). */
  async rewriteBlocks(count: number): Promise<void> {
    const fh = await open(this.image, 'r+');
    try {
      const stride = Math.floor(IMAGE_BLOCKS / count);
      const offset = this.seed++ % stride;
      for (let i = 0; i < count; i++) await fh.write(randomBytes(BLOCK_BYTES), 0, BLOCK_BYTES, ((offset + i * stride) % IMAGE_BLOCKS) * BLOCK_BYTES);
    } finally {
      await fh.close();
    }
  }

  /** The chunk files in the repository (name → bytes); temporary files are not chunks. */
  async chunkFiles(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const top = join(this.root, 'chunks');
    for (const sub of await readdir(top).catch(() => [] as string[])) {
      if (sub.startsWith('.')) continue;
      for (const name of await readdir(join(top, sub)).catch(() => [] as string[])) {
        if (name.startsWith('.')) continue;
        const size = await stat(join(top, sub, name)).then((s) => s.size, () => undefined);
        if (size !== undefined) out.set(name, size);
      }
    }
    return out;
  }

  /** Waits until at least `n` chunk files exist that were not in `before`. */
  async waitForNewChunks(before: Map<string, number>, n: number, timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const now = await this.chunkFiles();
      if (newBytes(before, now).count >= n) return;
      if (Date.now() > until) throw new Error(`fewer than ${n} new chunks after ${timeoutMs} ms`);
      await sleep(10);
    }
  }

  /** The manifest files stored for the disk (temporary files left aside). */
  async manifestFiles(): Promise<string[]> {
    const names = await readdir(join(this.root, 'disks', DISK)).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.manifest') && !n.startsWith('.')).map((n) => n.slice(0, -'.manifest'.length)).sort();
  }

  /**
   * The repository holds exactly the expected versions, whole: `list` (the use case, through
   * the server) shows them and only them, no other manifest is stored, and `verify` of every
   * version (on the repository's directory) finds no damage. In process: a CLI start costs a
   * second on a loaded machine, and the commands only print what these return.
   */
  async expectWhole(): Promise<void> {
    const remote = await openRepository(this.url, { tokenFile: this.tokenFile });
    const local = await openRepository(this.root);
    try {
      const [listed, verified] = await Promise.all([listVersions(remote, { diskId: DISK }), verifyRepository(local, {})]);
      expect(listed[0]?.versions.map((v) => v.version)).toEqual(this.versions);
      expect(await this.manifestFiles()).toEqual(this.versions);
      expect(verified).toMatchObject({ ok: true, versions: this.versions.length, damage: [] });
    } finally {
      await remote.backend.close();
      await local.backend.close();
    }
  }

  /** A backup that must succeed; its version joins the expected ones. */
  expectPublished(result: CliResult): { version: string; bytesSent: number; newChunks: number; reusedChunks: number } {
    expect(result.code, result.stderr + result.stdout).toBe(0);
    const disk = result.json.disks[0];
    this.versions.push(disk.version);
    return disk;
  }
}

/** Chunk files in `after` that were not in `before`: how many, and their bytes. */
export function newBytes(before: Map<string, number>, after: Map<string, number>): { count: number; bytes: number } {
  let count = 0;
  let bytes = 0;
  for (const [name, size] of after) {
    if (before.has(name)) continue;
    count++;
    bytes += size;
  }
  return { count, bytes };
}
