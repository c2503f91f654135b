import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { expect } from 'vitest';
import { GuestAgentClient } from '../../../src/hypervisor/guest-agent-client.js';
import { QmpClient } from '../../../src/hypervisor/qmp-client.js';
import { vmLockPathFor } from '../../../src/hypervisor/vm-lock.js';
import { run } from '../../support/qemu-tools.js';
import { runCli, type CliResult } from '../../support/run-cli.js';

/**
 * The tiny test guest (scripts/build-test-guest.sh, booted by scripts/guest/start-guest.sh):
 * a real Linux with the real QEMU guest agent under TCG, two ext4 data disks (disk1: qcow2 over
 * a backing file, -drive; vd2: raw, -blockdev) and a writer that keeps appending numbered
 * records ("rec N <id>") to /log on each disk and writing files. Plus the checks every live
 * test needs: is the VM as it was (safety), and is a restored disk clean and consistent.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Set BLOCKREP_SKIP_QEMU_TESTS=1 to skip the tests that boot QEMU; they never skip silently. */
export const skipQemuTests = process.env.BLOCKREP_SKIP_QEMU_TESTS === '1';

export interface Layer {
  device: string;
  file: string;
  depth: number;
}

export interface SafetyState {
  layers: Layer[];
  overlayFiles: string[];
  vmLock: boolean;
  jobs: string[];
  freeze: string;
}

export class TestGuest {
  readonly qmpSocket: string;
  readonly qgaSocket: string;
  /** A port the guest holds open and never answers on. */
  readonly silentSocket: string;
  /** A port no process in the guest opened. */
  readonly deadSocket: string;
  readonly name: string;
  private original: Layer[] = [];

  private constructor(
    readonly dir: string,
    name: string,
    readonly pid: number,
  ) {
    this.name = name;
    this.qmpSocket = join(dir, 'qmp.sock');
    this.qgaSocket = join(dir, 'qga.sock');
    this.silentSocket = join(dir, 'silent.sock');
    this.deadSocket = join(dir, 'dead.sock');
  }

  /** Builds the guest if needed (cached in .cache/test-guest), boots it, waits for its writer. */
  static async boot(dir: string, name = 'testvm'): Promise<TestGuest> {
    await mkdir(dir, { recursive: true });
    await run('bash', [join(ROOT, 'scripts/guest/start-guest.sh'), dir, name]);
    const pid = Number((await readFile(join(dir, 'qemu.pid'), 'utf8')).trim());
    const guest = new TestGuest(dir, name, pid);
    guest.original = await guest.layers();
    return guest;
  }

  get images(): { disk1: string; base1: string; disk2: string } {
    return { disk1: join(this.dir, 'a/disk1.qcow2'), base1: join(this.dir, 'a/base1.qcow2'), disk2: join(this.dir, 'b/disk2.raw') };
  }

  /** The last record number the writer announced on the console (it does so every 20). */
  async writerCount(): Promise<number> {
    const log = await readFile(join(this.dir, 'serial.log'), 'utf8');
    const all = [...log.matchAll(/^blockrep-writer (\d+)/gm)];
    return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
  }

  /** Waits until the writer has gone `records` past where it is now; returns the new count. */
  async waitForWriter(records = 20, timeoutMs = 30_000): Promise<number> {
    const start = await this.writerCount();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const n = await this.writerCount();
      if (n >= start + records) return n;
      if (Date.now() > deadline) throw new Error(`the guest's writer did not get past ${start + records} in ${timeoutMs} ms (at ${n})`);
      await sleep(100);
    }
  }

  async withQmp<T>(fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
    const qmp = await QmpClient.connect(this.qmpSocket);
    try {
      return await fn(qmp);
    } finally {
      await qmp.close();
    }
  }

  async withAgent<T>(fn: (agent: GuestAgentClient) => Promise<T>): Promise<T> {
    const agent = await GuestAgentClient.connect(this.qgaSocket);
    try {
      return await fn(agent);
    } finally {
      await agent.close();
    }
  }

  async layers(): Promise<Layer[]> {
    return this.withQmp(async (qmp) => {
      const blocks = await qmp.execute(
        'query-block',
        undefined,
        z.array(z.object({ device: z.string(), qdev: z.string().optional(), inserted: z.object({ file: z.string(), backing_file_depth: z.number() }).optional() })),
      );
      return blocks.flatMap((b) => (b.inserted ? [{ device: b.device || (b.qdev ?? ''), file: b.inserted.file, depth: b.inserted.backing_file_depth }] : []));
    });
  }

  async safetyState(): Promise<SafetyState> {
    const overlayFiles: string[] = [];
    for (const sub of ['a', 'b']) for (const n of await readdir(join(this.dir, sub))) if (n.includes('.blockrep-')) overlayFiles.push(`${sub}/${n}`);
    const jobs = await this.withQmp(async (qmp) => (await qmp.execute('query-jobs', undefined, z.array(z.object({ id: z.string() })))).map((j) => j.id));
    return {
      layers: await this.layers(),
      overlayFiles,
      vmLock: await exists(vmLockPathFor(this.qmpSocket)),
      jobs,
      freeze: await this.withAgent((a) => a.status()),
    };
  }

  /** The safety conditions: original images and backing depth, no overlay, no job, no lock, thawed. */
  async expectSafe(): Promise<void> {
    expect(await this.safetyState()).toEqual({ layers: this.original, overlayFiles: [], vmLock: false, jobs: [], freeze: 'thawed' });
    expect(this.original.map((l) => [l.file, l.depth])).toEqual([
      [this.images.disk1, 1],
      [this.images.disk2, 0],
    ]);
  }

  async stop(): Promise<void> {
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      return;
    }
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(this.pid, 0);
      } catch {
        return;
      }
      await sleep(20);
    }
    process.kill(this.pid, 'SIGKILL');
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** A running CLI whose stderr can be waited on (for runs held at a phase, then killed). */
export interface RunningCli {
  child: ChildProcess;
  stderr(): string;
  waitForStderr(text: string, timeoutMs?: number): Promise<void>;
  exit: Promise<CliResult>;
}

const BIN = join(ROOT, 'bin/blockrep.js');

export function startCli(args: string[], env: Record<string, string> = {}): RunningCli {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    for (const l of listeners) l();
  });
  const exit = new Promise<CliResult>((resolve) => {
    child.on('exit', (code, signal) => {
      let json: unknown;
      try {
        json = JSON.parse(out);
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? (signal === 'SIGKILL' ? 137 : 1), stdout: out, stderr: err, json });
    });
  });
  return {
    child,
    stderr: () => err,
    exit,
    waitForStderr: (text, timeoutMs = 60_000) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (err.includes(text)) {
            listeners.delete(check);
            clearTimeout(timer);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`blockrep did not print ${JSON.stringify(text)} within ${timeoutMs} ms; stderr: ${err}; stdout: ${out}`));
        }, timeoutMs);
        listeners.add(check);
        void exit.then(() => {
          if (!err.includes(text)) {
            listeners.delete(check);
            clearTimeout(timer);
            reject(new Error(`blockrep exited before printing ${JSON.stringify(text)}; stderr: ${err}; stdout: ${out}`));
          }
        });
        check();
      }),
  };
}

export interface RestoredDisk {
  /** The last record in /log: records 1..last are there, in order, without a gap. */
  lastRecord: number;
  /** Files checked whole (f<m> for m a multiple of 10 within the writer's window). */
  filesChecked: number;
}

/**
 * Restores one version of one disk and checks it as the guest left it at the snapshot:
 * e2fsck -fn finds it clean; /log is "rec 1 <id>" … "rec k <id>" with no gap or torn line;
 * every file the writer must have kept at record k is there, whole.
 */
export async function checkRestoredDisk(repo: string, disk: string, version: string, diskName: string, work: string): Promise<RestoredDisk> {
  const image = join(work, `${disk.replaceAll('/', '_')}-${version}.raw`);
  const out = join(work, `${disk.replaceAll('/', '_')}-${version}.files`);
  const restored = await runCli(['restore', '--repo', repo, '--disk', disk, '--version', version, '--to', image, '--json']);
  expect(restored.code, restored.stderr).toBe(0);
  try {
    const fsck = await runTool('e2fsck', ['-fn', image]);
    expect(fsck.code, `e2fsck -fn ${disk} ${version}:\n${fsck.stdout}${fsck.stderr}`).toBe(0);
    await mkdir(out, { recursive: true });
    await run('debugfs', ['-R', `dump /log ${join(out, 'log')}`, image]);
    await run('debugfs', ['-R', `rdump /files ${out}`, image]);
    const log = await readFile(join(out, 'log'), 'utf8');
    expect(log.endsWith('\n'), 'the log ends with a whole line').toBe(true);
    const lines = log.slice(0, -1).split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (lines[i] !== `rec ${i + 1} ${diskName}`) expect.fail(`${disk} ${version}: /log line ${i + 1} is ${JSON.stringify(lines[i])}, expected "rec ${i + 1} ${diskName}"`);
    }
    const k = lines.length;
    let filesChecked = 0;
    // The writer removes f<n-500> just before appending record n, so a snapshot taken before
    // record k+1 may already miss f<k-490>: check from f<k-480> on.
    for (let m = Math.max(10, Math.ceil((k - 489) / 10) * 10); m <= k; m += 10) {
      const text = await readFile(join(out, 'files', `f${m}`), 'utf8').catch(() => undefined);
      if (text === undefined) expect.fail(`${disk} ${version}: /files/f${m} is missing though /log reached ${k}`);
      expect(text).toBe(`${Array.from({ length: 64 }, () => `file ${m} ${diskName}`).join('\n')}\n`);
      filesChecked++;
    }
    return { lastRecord: k, filesChecked };
  } finally {
    await rm(image, { force: true });
    await rm(out, { recursive: true, force: true });
  }
}

function runTool(program: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}
