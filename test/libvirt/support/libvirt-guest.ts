import { execFile } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { backupWorkDir } from '../../../src/libvirt/domain-backup-job.js';
import { domainLockPath } from '../../../src/libvirt/domain-lock.js';
import { parseDomainXml } from '../../../src/libvirt/domain-xml.js';
import { exists, sleep } from '../../live/support/test-guest.js';
import { run } from '../../support/qemu-tools.js';

/**
 * A real libvirtd and the tiny test guest (scripts/build-test-guest.sh) as a libvirt domain:
 * `<domain type='qemu'>` (TCG) with direct kernel boot, two ext4 data disks — vda, a qcow2 over
 * a raw backing file, and vdb, a raw file — the guest-agent channel, and the console in a file
 * where the guest's writer announces its records. libvirtd (and virtlogd) are started here when
 * they are not running, without systemd, and stopped again by `stopLibvirtd` only then.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const URI = 'qemu:///system';

/** Set BLOCKREP_SKIP_LIBVIRT_TESTS=1 (or BLOCKREP_SKIP_QEMU_TESTS=1) to skip the tests that need libvirtd. */
export const skipLibvirtTests = process.env.BLOCKREP_SKIP_LIBVIRT_TESTS === '1' || process.env.BLOCKREP_SKIP_QEMU_TESTS === '1';

export interface VirshResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function virsh(args: string[], timeoutMs = 120_000): Promise<VirshResult> {
  return new Promise((resolve) => {
    execFile('virsh', ['-c', URI, ...args], { env: { ...process.env, LC_ALL: 'C' }, timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

export async function virshOk(args: string[], timeoutMs?: number): Promise<string> {
  const r = await virsh(args, timeoutMs);
  if (r.code !== 0) throw new Error(`virsh ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

function pidAlive(pidFile: string): Promise<boolean> {
  return readFile(pidFile, 'utf8').then(
    (t) => {
      try {
        process.kill(Number(t.trim()), 0);
        return true;
      } catch {
        return false;
      }
    },
    () => false,
  );
}

/** What ensureLibvirtd started, for stopLibvirtd. */
export interface LibvirtDaemons {
  started: Array<{ name: string; pidFile: string }>;
}

/**
 * Test files share one libvirtd (they may run at the same time): each registers itself in
 * USERS, and the daemons the tests started are stopped by the last file to leave.
 */
const USERS = '/run/blockrep-test-libvirtd';
const STARTED = join(USERS, 'started.json');

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts virtlogd and libvirtd when they are not running; waits until `virsh version` answers. */
export async function ensureLibvirtd(): Promise<LibvirtDaemons> {
  await mkdir(USERS, { recursive: true });
  await writeFile(join(USERS, `user-${process.pid}`), '');
  const started: LibvirtDaemons['started'] = JSON.parse(await readFile(STARTED, 'utf8').catch(() => '[]')) as LibvirtDaemons['started'];
  for (const [name, pidFile] of [
    ['virtlogd', '/run/virtlogd.pid'],
    ['libvirtd', '/run/libvirtd.pid'],
  ] as const) {
    if (await pidAlive(pidFile)) continue;
    await run(name, ['-d']);
    if (!started.some((d) => d.name === name)) started.push({ name, pidFile });
  }
  await writeFile(STARTED, JSON.stringify(started));
  const deadline = Date.now() + 90_000;
  for (;;) {
    const r = await virsh(['version'], 30_000);
    if (r.code === 0) return { started };
    if (Date.now() > deadline) throw new Error(`libvirtd did not answer virsh version within 90 s: ${r.stderr}`);
    await sleep(200);
  }
}

export async function stopLibvirtd(_daemons: LibvirtDaemons | undefined): Promise<void> {
  await rm(join(USERS, `user-${process.pid}`), { force: true });
  const others = (await readdir(USERS).catch(() => [] as string[])).filter((n) => n.startsWith('user-') && processAlive(Number(n.slice(5))));
  if (others.length > 0) return;
  const started = JSON.parse(await readFile(STARTED, 'utf8').catch(() => '[]')) as LibvirtDaemons['started'];
  await rm(STARTED, { force: true });
  for (const d of [...started].reverse()) {
    const pid = Number((await readFile(d.pidFile, 'utf8').catch(() => '0')).trim());
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {}
      for (let i = 0; i < 100 && (await pidAlive(d.pidFile)); i++) await sleep(100);
    }
  }
}

export interface DomainLayers {
  live: Array<[string, string | undefined, string | undefined, string]>;
  persistent: Array<[string, string | undefined, string | undefined]>;
}

export class LibvirtGuest {
  private original: DomainLayers | undefined;

  private constructor(
    readonly dir: string,
    readonly name: string,
  ) {}

  get images(): { disk1: string; base1: string; disk2: string } {
    return { disk1: join(this.dir, 'a/disk1.qcow2'), base1: join(this.dir, 'a/base1.raw'), disk2: join(this.dir, 'b/disk2.raw') };
  }

  /** Defines the domain (persistent) and, unless `start` is false, boots it and waits for the agent and the writer. */
  static async create(dir: string, name: string, options: { start?: boolean } = {}): Promise<LibvirtGuest> {
    const g = new LibvirtGuest(dir, name);
    // QEMU runs as libvirt-qemu: it needs to pass through the folders (mkdtemp makes them 0700).
    await mkdir(join(dir, 'a'), { recursive: true });
    await mkdir(join(dir, 'b'), { recursive: true });
    for (const d of [dir, join(dir, 'a'), join(dir, 'b')]) await chmod(d, 0o755);
    const guest = (await run('bash', [join(ROOT, 'scripts/build-test-guest.sh')])).stdout.trim();
    // A copy: libvirt relabels (chowns) the kernel and initrd it boots.
    await copyFile(join(guest, 'vmlinuz'), join(dir, 'vmlinuz'));
    await copyFile(join(guest, 'initrd.img'), join(dir, 'initrd.img'));
    await makeExt4(join(dir, 'a/base1.raw'), 'data1', 'disk1');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base1.raw', '-F', 'raw', join(dir, 'a/disk1.qcow2')]);
    await makeExt4(g.images.disk2, 'data2', 'disk2');
    const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>${dir}/vmlinuz</kernel><initrd>${dir}/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 quiet loglevel=1</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${g.images.disk1}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${g.images.disk2}'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source path='${dir}/serial.log'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`;
    await writeFile(join(dir, 'domain.xml'), xml);
    await virshOk(['define', join(dir, 'domain.xml')]);
    if (options.start !== false) await g.start();
    return g;
  }

  async start(): Promise<void> {
    await rm(join(this.dir, 'serial.log'), { force: true });
    await virshOk(['start', this.name]);
    await this.waitForAgent();
    await this.waitForWriter(1, 90_000);
    this.original = await this.layers();
  }

  /** Waits until libvirt sees the agent's channel open and the agent answers (domfsinfo). */
  async waitForAgent(timeoutMs = 90_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const live = parseDomainXml(await virshOk(['dumpxml', this.name]));
      if (live.agent?.state === 'connected' && (await virsh(['domfsinfo', this.name], 30_000)).code === 0) return;
      if (Date.now() > deadline) throw new Error(`the guest agent of ${this.name} did not answer within ${timeoutMs} ms`);
      await sleep(250);
    }
  }

  async writerCount(): Promise<number> {
    const log = await readFile(join(this.dir, 'serial.log'), 'utf8').catch(() => '');
    const all = [...log.matchAll(/^blockrep-writer (\d+)/gm)];
    return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
  }

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

  async layers(): Promise<DomainLayers> {
    const live = parseDomainXml(await virshOk(['dumpxml', this.name]));
    const persistent = parseDomainXml(await virshOk(['dumpxml', '--inactive', this.name]));
    return {
      live: live.disks.map((d) => [d.target, d.source, d.format, d.chain.map((l) => `${l.source}:${l.format}`).join(' > ') + (d.mirror ? ' +mirror' : '')]),
      persistent: persistent.disks.map((d) => [d.target, d.source, d.format]),
    };
  }

  /** The agent's view, through libvirt (qemu-agent-command taints the domain: fine for a test domain). */
  async freezeStatus(): Promise<string> {
    const out = await virshOk(['qemu-agent-command', this.name, '{"execute":"guest-fsfreeze-status"}']);
    return (JSON.parse(out) as { return: string }).return;
  }

  async blockJobs(): Promise<string[]> {
    const jobs: string[] = [];
    for (const t of ['vda', 'vdb']) {
      const out = await virshOk(['blockjob', this.name, t, '--info', '--raw']);
      if (out.trim() !== '') jobs.push(`${t}: ${out.trim()}`);
    }
    // A domain job (a pull-mode backup) is not a block job of a disk.
    const job = /^Job type:\s*(\S+)/m.exec(await virshOk(['domjobinfo', this.name]))?.[1];
    if (job !== 'None') jobs.push(`domain job: ${job}`);
    return jobs;
  }

  /** blockrep's work folder of backup jobs on this domain (NBD socket, scratch files): gone after every run. */
  async workDirExists(): Promise<boolean> {
    return exists(await backupWorkDir(undefined, this.name));
  }

  async checkpoints(): Promise<string[]> {
    return (await virshOk(['checkpoint-list', this.name, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();
  }

  async overlayFiles(): Promise<string[]> {
    const found: string[] = [];
    for (const sub of ['a', 'b']) for (const n of await readdir(join(this.dir, sub))) if (n.includes('.blockrep-')) found.push(`${sub}/${n}`);
    return found;
  }

  /** The safety conditions: original sources and chains (live and persistent), no overlay, no job, no lock, thawed. */
  async expectSafe(): Promise<void> {
    const state = {
      layers: await this.layers(),
      overlayFiles: await this.overlayFiles(),
      jobs: await this.blockJobs(),
      lock: await exists(await domainLockPath(undefined, this.name)),
      workDir: await this.workDirExists(),
      freeze: await this.freezeStatus(),
    };
    expect(state).toEqual({ layers: this.original, overlayFiles: [], jobs: [], lock: false, workDir: false, freeze: 'thawed' });
    expect(this.original).toEqual({
      live: [
        ['vda', this.images.disk1, 'qcow2', `${this.images.base1}:raw`],
        ['vdb', this.images.disk2, 'raw', ''],
      ],
      persistent: [
        ['vda', this.images.disk1, 'qcow2'],
        ['vdb', this.images.disk2, 'raw'],
      ],
    });
  }

  /** Stops and undefines the domain; never throws. */
  async remove(): Promise<void> {
    await virsh(['destroy', this.name]);
    await virsh(['undefine', this.name, '--checkpoints-metadata']);
  }
}

async function makeExt4(image: string, label: string, id: string): Promise<void> {
  const tree = `${image}.tree`;
  await mkdir(join(tree, 'files'), { recursive: true });
  await writeFile(join(tree, 'id'), `${id}\n`);
  await run('truncate', ['-s', '64M', image]);
  await run('mkfs.ext4', ['-q', '-F', '-L', label, '-d', tree, image]);
  await rm(tree, { recursive: true, force: true });
}
