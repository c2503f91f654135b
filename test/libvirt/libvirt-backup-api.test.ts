import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { checkRestoredDisk, startCli } from '../live/support/test-guest.js';
import { ensureLibvirtd, LibvirtGuest, skipLibvirtTests, stopLibvirtd, virshOk, type LibvirtDaemons } from './support/libvirt-guest.js';

/**
 * `blockrep backup --domain --method backup-api|auto` against a real libvirtd and the 2-disk test
 * guest (vda qcow2 over a raw base, vdb raw): libvirt's pull-mode backup with blockrep's
 * checkpoints. Restores are fsck-clean and consistent; with the domain suspended a bitmap run, a
 * `--full-scan` run and a snapshot-method run agree block for block; the checkpoint chain
 * survives destroy + start; kill -9 during the read and `recover` leave the domain as it was.
 * After every test: original sources (live and persistent), no job, no work folder, thawed.
 */

describe.skipIf(skipLibvirtTests)('libvirt domain, method backup-api', () => {
  let daemons: LibvirtDaemons | undefined;
  let dir: string;
  let work: string;
  let repo: string;
  let guest: LibvirtGuest;
  const suffix = randomBytes(4).toString('hex');
  const backup = (extra: string[] = [], env?: Record<string, string>) => runCli(['backup', '--domain', guest.name, '--repo', repo, '--block-size', '256K', '--json', ...extra], env ? { env } : {});
  const byDisk = (json: { disks: Array<{ disk: string }> }, target: string): any => json.disks.find((d) => d.disk === `${guest.name}/${target}`);

  beforeAll(async () => {
    daemons = await ensureLibvirtd();
    dir = await mkdtemp(join(tmpdir(), 'blockrep-libvirt-api-'));
    work = join(dir, 'restores');
    await mkdir(work);
    await chmod(dir, 0o755);
    repo = join(dir, 'repo');
    guest = await LibvirtGuest.create(join(dir, 'vm'), `blockrep-api-${suffix}`);
  }, 240_000);
  afterAll(async () => {
    await guest?.remove();
    await stopLibvirtd(daemons);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  afterEach(async () => {
    await guest.expectSafe();
    await guest.waitForWriter(10);
  });

  it('auto picks backup-api; restores are clean and consistent; the next run reads only the dirty blocks of vda; old checkpoints go, a foreign one stays', async () => {
    const before = await guest.writerCount();
    const first = await backup();
    expect(first.code, first.stderr).toBe(0);
    expect(first.json).toMatchObject({ ok: true, method: 'backup-api', methodReason: expect.stringContaining('auto: libvirt'), quiesced: true, frozenMs: expect.any(Number) });
    expect(byDisk(first.json, 'vda')).toMatchObject({ scan: 'full', scanReason: 'first-backup' });
    expect(byDisk(first.json, 'vdb')).toMatchObject({ scan: 'full', scanReason: 'not-trackable' });
    const c1 = first.json.checkpoints.created as string;
    expect(c1).toMatch(/^blockrep-[0-9a-f]{12}-/);
    expect(await guest.checkpoints()).toEqual([c1]);
    await guest.expectSafe();
    const d1 = await checkRestoredDisk(repo, `${guest.name}/vda`, byDisk(first.json, 'vda').version, 'disk1', work);
    const d2 = await checkRestoredDisk(repo, `${guest.name}/vdb`, byDisk(first.json, 'vdb').version, 'disk2', work);
    expect(d1.lastRecord).toBeGreaterThanOrEqual(before);
    expect(Math.abs(d1.lastRecord - d2.lastRecord)).toBeLessThanOrEqual(1);

    // Another tool's checkpoint: never touched.
    await virshOk(['checkpoint-create-as', guest.name, '--name', `other-tool-${suffix}`, '--diskspec', 'vda,checkpoint=bitmap', '--diskspec', 'vdb,checkpoint=no']);
    await guest.waitForWriter(20);
    const second = await backup();
    expect(second.code, second.stderr).toBe(0);
    const vda = byDisk(second.json, 'vda');
    expect(vda).toMatchObject({ scan: 'bitmap', parentVersion: byDisk(first.json, 'vda').version });
    expect(vda.scanReason).toBeUndefined();
    // The writer appends a few KiB a second: a small fraction of the 64 MiB disk is read.
    expect(vda.bytesRead).toBeLessThan(vda.imageBytes / 8);
    expect(byDisk(second.json, 'vdb')).toMatchObject({ scan: 'full', scanReason: 'not-trackable' });
    expect(second.json.checkpoints).toMatchObject({ deleted: [c1] });
    expect(await guest.checkpoints()).toEqual([second.json.checkpoints.created, `other-tool-${suffix}`].sort());
    const d1b = await checkRestoredDisk(repo, `${guest.name}/vda`, vda.version, 'disk1', work);
    expect(d1b.lastRecord).toBeGreaterThan(d1.lastRecord);
    await virshOk(['checkpoint-delete', guest.name, `other-tool-${suffix}`]);
  });

  it('with the domain suspended: a bitmap run, a --full-scan run and a snapshot-method run find the same blocks', async () => {
    await virshOk(['suspend', guest.name]);
    try {
      const bitmap = await backup();
      expect(bitmap.code, bitmap.stderr).toBe(0);
      expect(bitmap.json).toMatchObject({ method: 'backup-api', quiesced: false, warnings: [expect.stringContaining('paused')] });
      expect(byDisk(bitmap.json, 'vda').scan).toBe('bitmap');
      const full = await backup(['--full-scan']);
      expect(full.code, full.stderr).toBe(0);
      expect(byDisk(full.json, 'vda')).toMatchObject({ scan: 'full', scanReason: 'full-scan-requested', changedBlocks: 0 });
      expect(byDisk(full.json, 'vdb')).toMatchObject({ scan: 'full', changedBlocks: 0 });
      // --full-scan still starts a new checkpoint: the next run is incremental again.
      expect(await guest.checkpoints()).toEqual([full.json.checkpoints.created]);
      const snap = await backup(['--method', 'snapshot']);
      expect(snap.code, snap.stderr).toBe(0);
      expect(snap.json).toMatchObject({ method: 'snapshot', methodReason: 'asked for (method snapshot)' });
      for (const t of ['vda', 'vdb']) expect(byDisk(snap.json, t).changedBlocks).toBe(0);
    } finally {
      await virshOk(['resume', guest.name]);
    }
  });

  it('the checkpoint survives destroy + start: the next run of vda is a bitmap run after a full one', async () => {
    // The snapshot run above left vda's latest version untracked: this run reads it whole and starts the chain again.
    const full = await backup(['--method', 'backup-api']);
    expect(full.code, full.stderr).toBe(0);
    expect(byDisk(full.json, 'vda')).toMatchObject({ scan: 'full', scanReason: 'untracked-parent' });
    await virshOk(['destroy', guest.name]);
    await guest.start();
    // (The guest's own files saw a power cut: the oracle is a full read of the same state, not its record log.)
    await virshOk(['suspend', guest.name]);
    try {
      const after = await backup();
      expect(after.code, after.stderr).toBe(0);
      expect(byDisk(after.json, 'vda')).toMatchObject({ scan: 'bitmap' });
      const oracle = await backup(['--full-scan']);
      expect(oracle.code, oracle.stderr).toBe(0);
      expect(byDisk(oracle.json, 'vda')).toMatchObject({ scan: 'full', changedBlocks: 0 });
    } finally {
      await virshOk(['resume', guest.name]);
    }
  });

  it('kill -9 while the exports are read: backup refuses, recover ends the job and removes the work folder; a job-config run works after', async () => {
    const run = startCli(['backup', '--domain', guest.name, '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'backup-begun' });
    await run.waitForStderr('test hold at backup-begun');
    run.child.kill('SIGKILL');
    expect((await run.exit).code).toBe(137);
    expect(await guest.blockJobs()).toEqual(expect.arrayContaining([expect.stringMatching(/^vda: type=Backup/), expect.stringMatching(/^domain job: /)]));
    expect(await guest.workDirExists()).toBe(true);

    const refused = await backup();
    expect(refused.code).toBe(10);
    expect(refused.json).toMatchObject({ ok: false, code: 'RECOVERY_NEEDED', message: expect.stringContaining(`blockrep recover --domain ${guest.name}`) });

    const rec = await runCli(['recover', '--domain', guest.name, '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(rec.json).toMatchObject({ ok: true, agent: 'ok', committed: [] });
    expect(rec.json.jobs).toEqual([
      { disk: 'vda', type: 'Backup', action: 'aborted' },
      { disk: 'vdb', type: 'Backup', action: 'aborted' },
    ]);
    expect(rec.json.removedFiles).toHaveLength(1);
    // The killed run's checkpoint stays (recover has no repository to judge it): two of blockrep's now.
    expect((await guest.checkpoints()).length).toBe(2);

    const config = join(dir, 'blockrep.yaml');
    await writeFile(config, `repository: {url: ${repo}}\ndefaults: {blockSize: 256K}\nvms:\n  - domain: ${guest.name}\n    method: backup-api\n    quiesce: require\n`);
    const r = await runCli(['run', '--config', config, '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.json.vms[0]).toMatchObject({ vm: guest.name, kind: 'libvirt', method: 'backup-api', status: 'ok', quiesced: true });
    expect(r.json.vms[0].disks.find((d: { disk: string }) => d.disk === `${guest.name}/vda`)).toMatchObject({ scan: 'bitmap' });
    // Both older checkpoints covered only vda, which has a newer version now.
    expect(r.json.vms[0].checkpoints.deleted).toHaveLength(2);
    expect(await guest.checkpoints()).toEqual([r.json.vms[0].checkpoints.created]);
  });

  it('--all-running backs up each running domain as --domain would (the listing narrowed to this file\'s domain: other test files run theirs)', async () => {
    // A `virsh` first on the PATH that answers `list` with this domain only and runs the real virsh for the rest.
    const bin = join(dir, 'bin');
    await mkdir(bin, { recursive: true });
    const real = execFileSync('sh', ['-c', 'command -v virsh'], { encoding: 'utf8' }).trim();
    await writeFile(join(bin, 'virsh'), `#!/bin/sh\nfor a in "$@"; do [ "$a" = list ] && { echo ${guest.name}; exit 0; }; done\nexec ${real} "$@"\n`, { mode: 0o755 });
    const r = await runCli(['backup', '--all-running', '--repo', repo, '--block-size', '256K', '--json'], { env: { PATH: `${bin}:${process.env.PATH ?? ''}` } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ ok: true, domains: [{ ok: true, domain: guest.name, method: 'backup-api' }] });
    expect(r.json.domains[0].disks.map((d: { disk: string }) => d.disk)).toEqual([`${guest.name}/vda`, `${guest.name}/vdb`]);
    const usage = await runCli(['backup', '--all-running', '--domain', guest.name, '--repo', repo, '--json']);
    expect(usage.code).toBe(2);
  });

  it("a block job that is not blockrep's: BLOCK_JOB_ACTIVE, no job started, no checkpoint made", async () => {
    const before = await guest.checkpoints();
    await virshOk(['blockcopy', guest.name, 'vdb', join(guest.dir, 'copy.raw'), '--transient-job']);
    try {
      const r = await backup(['--method', 'backup-api']);
      expect(r.code).toBe(5);
      expect(r.json).toMatchObject({ ok: false, code: 'BLOCK_JOB_ACTIVE', details: { disk: 'vdb' } });
      expect(await guest.checkpoints()).toEqual(before);
    } finally {
      await virshOk(['blockjob', guest.name, 'vdb', '--abort']);
    }
  });
});
