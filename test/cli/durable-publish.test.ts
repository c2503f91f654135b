import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli, spawnCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * "A published version is durable and whole", watched from outside: the real CLI and the real
 * `blockrep serve`, their system calls recorded by strace. Chunks are written without an fsync
 * each (sync level filesystem), and one syncfs(2) runs after the last chunk is renamed into
 * place and before the manifest is linked under its name; at sync level file every chunk is
 * fsynced and no syncfs runs. Then kill -9 mid-backup followed by what a power cut can leave of
 * unsynced chunks (files cut short under their names): the next run stores them anew and the
 * version it publishes verifies.
 */
const BIN = fileURLToPath(new URL('../../bin/blockrep.js', import.meta.url));
const BLOCK = 64 * 1024;
const BLOCKS = 48;

interface Call {
  name: string;
  args: string;
  /** Order of entry and of completion among all recorded events. */
  entered: number;
  done: number;
}

/** The calls of an `strace -f` log, with the order in which each began and ended. */
function parseStrace(log: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, { name: string; args: string; entered: number }>();
  let seq = 0;
  for (const line of log.split('\n')) {
    let m = /^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$/.exec(line);
    if (m) {
      open.set(m[1]!, { name: m[2]!, args: m[3]!, entered: seq++ });
      continue;
    }
    m = /^(\d+)\s+<\.\.\. (\w+) resumed>.*= (-?\d+)/.exec(line);
    if (m) {
      const begun = open.get(m[1]!);
      open.delete(m[1]!);
      if (begun && m[3] === '0') calls.push({ ...begun, done: seq++ });
      continue;
    }
    m = /^(\d+)\s+(\w+)\((.*)\)\s+= (-?\d+)/.exec(line);
    if (m && m[4] === '0') {
      const at = seq++;
      calls.push({ name: m[2]!, args: m[3]!, entered: at, done: at });
    }
  }
  return calls;
}

/** What the order of calls says about one backup into `root`. */
function order(calls: Call[], root: string) {
  const intoPlace = (c: Call) => /^(rename|renameat2?|link|linkat)$/.test(c.name);
  const chunkRenames = calls.filter((c) => intoPlace(c) && c.args.includes(`${root}/chunks/`));
  const manifest = calls.find((c) => intoPlace(c) && new RegExp(`${root}/disks/[^"]+\\.manifest"`).test(c.args) && !c.args.includes('.tmp-uploads'));
  const syncfs = calls.filter((c) => c.name === 'syncfs');
  const fsyncs = calls.filter((c) => c.name === 'fsync' || c.name === 'fdatasync');
  const lastChunk = Math.max(...chunkRenames.map((c) => c.done));
  const between = syncfs.filter((c) => c.entered > lastChunk && manifest !== undefined && c.done < manifest.entered);
  return { chunkRenames: chunkRenames.length, manifest, syncfs: syncfs.length, syncfsBetween: between.length, fsyncs: fsyncs.length };
}

const TRACE = ['-f', '-qq', '-s', '512', '-e', 'trace=syncfs,fsync,fdatasync,rename,renameat,renameat2,link,linkat'];

function traced(logFile: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('strace', [...TRACE, '-o', logFile, process.execPath, BIN, ...args], { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', (code) => resolve(code ?? 1));
  });
}

async function image(dir: string, name = 'disk.raw'): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, randomBytes(BLOCK * BLOCKS));
  return path;
}

describe('durable publish, by the system calls of real processes', () => {
  it('local folder: no fsync per chunk; one syncfs after the last chunk is in place and before the manifest is; sync level file: an fsync per chunk, no syncfs', async () => {
    const dir = await tempDir('blockrep-durable-');
    const img = await image(dir);
    for (const level of ['filesystem', 'file'] as const) {
      const repo = join(dir, `repo-${level}`);
      const logFile = join(dir, `strace-${level}.log`);
      expect(await traced(logFile, ['backup', img, '--repo', repo, '--block-size', '64K', '--sync-level', level, '--json'])).toBe(0);
      const o = order(parseStrace(await readFile(logFile, 'utf8')), repo);
      expect(o.chunkRenames).toBe(BLOCKS);
      expect(o.manifest).toBeDefined();
      if (level === 'filesystem') {
        expect(o.syncfsBetween).toBe(1);
        expect(o.fsyncs).toBeLessThan(BLOCKS / 4); // the manifest, the lock, folders: not the chunks
      } else {
        expect(o.syncfs).toBe(0);
        expect(o.fsyncs).toBeGreaterThanOrEqual(BLOCKS);
      }
      expect((await runCli(['verify', '--repo', repo, '--json'])).json).toMatchObject({ ok: true });
    }
  });

  it('blockrep serve: one syncfs after the last chunk it received is in place and before it stores the manifest', async () => {
    const dir = await tempDir('blockrep-durable-serve-');
    const img = await image(dir);
    const root = join(dir, 'root');
    const logFile = join(dir, 'strace-serve.log');
    const server = spawn('strace', [...TRACE, '-o', logFile, process.execPath, BIN, 'serve', '--root', root, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        server.stdout!.setEncoding('utf8').on('data', (d: string) => {
          out += d;
          const m = /listening on (\S+)/.exec(out);
          if (m) resolve(m[1]!);
        });
        server.on('exit', (code) => reject(new Error(`serve exited ${code}`)));
      });
      const run = await runCli(['backup', img, '--repo', url, '--block-size', '64K', '--json']);
      expect(run.json).toMatchObject({ ok: true });
    } finally {
      // strace waits for its tracee: stop the server itself, and strace ends with it.
      const exited = new Promise((r) => server.once('exit', r));
      const children = await readFile(`/proc/${server.pid}/task/${server.pid}/children`, 'utf8').catch(() => '');
      for (const pid of children.trim().split(/\s+/).filter(Boolean)) process.kill(Number(pid), 'SIGTERM');
      await exited;
    }
    const o = order(parseStrace(await readFile(logFile, 'utf8')), root);
    expect(o.chunkRenames).toBe(BLOCKS);
    expect(o.manifest).toBeDefined();
    expect(o.syncfsBetween).toBeGreaterThanOrEqual(1);
    expect(o.fsyncs).toBeLessThan(BLOCKS / 4);
  });

  it('kill -9 mid-backup, then chunk files cut short as a power cut can leave unsynced files: the next run stores those anew and its version verifies', async () => {
    const dir = await tempDir('blockrep-durable-kill-');
    const img = await image(dir);
    const repo = join(dir, 'repo');
    const chunkFiles = async (): Promise<string[]> => {
      const out: string[] = [];
      for (const sub of await readdir(join(repo, 'chunks')).catch(() => [] as string[])) {
        for (const f of await readdir(join(repo, 'chunks', sub))) if (!f.startsWith('.tmp-')) out.push(join(repo, 'chunks', sub, f));
      }
      return out;
    };
    const run = spawnCli(['backup', img, '--repo', repo, '--block-size', '64K', '--bwlimit', '256K', '--json']);
    for (let i = 0; i < 600 && (await chunkFiles()).length < 12; i++) await new Promise((r) => setTimeout(r, 50));
    run.child.kill('SIGKILL');
    expect((await run.exit).code).toBe(137);
    const left = await chunkFiles();
    expect(left.length).toBeGreaterThanOrEqual(12);
    expect(left.length).toBeLessThan(BLOCKS);
    expect(await readdir(join(repo, 'disks')).catch(() => [])).toEqual([]); // nothing published
    // Every other chunk cut short, one of them to nothing.
    const torn = left.filter((_, i) => i % 2 === 0);
    for (const [i, f] of torn.entries()) await truncate(f, i === 0 ? 0 : Math.floor((await stat(f)).size / 2));

    const next = await runCli(['backup', img, '--repo', repo, '--block-size', '64K', '--json']);
    expect(next.json).toMatchObject({ ok: true });
    const disk = next.json.disks[0];
    expect(disk.reusedChunks).toBe(left.length - torn.length);
    expect(disk.newChunks).toBe(BLOCKS - (left.length - torn.length));
    expect((await runCli(['verify', '--repo', repo, '--json'])).json).toMatchObject({ ok: true });
  });
});
