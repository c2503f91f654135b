import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openRepository } from '../../src/repository/index.js';
import { runCli } from '../support/run-cli.js';
import { checkRestoredDisk, exists, startCli } from '../live/support/test-guest.js';
import { ensureLibvirtd, LibvirtGuest, skipLibvirtTests, stopLibvirtd, virsh, virshOk, type LibvirtDaemons } from './support/libvirt-guest.js';

/**
 * `blockrep backup --domain` (method snapshot) and `blockrep recover --domain` against a real
 * libvirtd and a real guest that keeps writing: restores are fsck-clean with gap-free record
 * logs; after every run both definitions are on the original images and chain, no overlay file
 * and no block job is left, the guest is thawed and still writing — also after kill -9 of
 * blockrep and `recover`. One domain for the file (TCG is CPU-heavy).
 */

describe.skipIf(skipLibvirtTests)('libvirt domain, method snapshot', () => {
  let daemons: LibvirtDaemons | undefined;
  let dir: string;
  let work: string;
  let repo: string;
  let guest: LibvirtGuest;
  let stopped: LibvirtGuest | undefined;
  const suffix = randomBytes(4).toString('hex');

  beforeAll(async () => {
    daemons = await ensureLibvirtd();
    // Removed in afterAll below, after the domains are gone (libvirt owns files in it until then).
    dir = await mkdtemp(join(tmpdir(), 'blockrep-libvirt-'));
    work = join(dir, 'restores');
    await mkdir(work);
    // QEMU runs as libvirt-qemu and must pass through to the images.
    await chmod(dir, 0o755);
    repo = join(dir, 'repo');
    guest = await LibvirtGuest.create(join(dir, 'vm'), `blockrep-test-${suffix}`);
  }, 240_000);
  afterAll(async () => {
    await guest?.remove();
    await stopped?.remove();
    await stopLibvirtd(daemons);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  describe('with the domain put right after each test', () => {
    afterEach(async () => {
      await guest.expectSafe();
      // ... and the guest still writes.
      await guest.waitForWriter(20);
    });

    it('backs up both disks through a quiesced snapshot; the restores are clean and consistent; an incremental run sends little', async () => {
      const before = await guest.writerCount();
      const r = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--connect', 'qemu:///system', '--repo', repo, '--block-size', '256K', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ ok: true, method: 'snapshot', domain: guest.name, quiesced: true });
      expect(r.json.disks.map((d: { disk: string }) => d.disk)).toEqual([`${guest.name}/vda`, `${guest.name}/vdb`]);
      expect(r.json.warnings).toBeUndefined();
      if (process.env.BLOCKREP_TEST_VERBOSE) console.log('first run', JSON.stringify({ durationMs: r.json.durationMs, snapshot: r.json.snapshot, overlayMs: r.json.disks.map((d: { overlayMs: number }) => d.overlayMs) }));
      await guest.expectSafe();

      const d1 = await checkRestoredDisk(repo, `${guest.name}/vda`, r.json.disks[0].version, 'disk1', work);
      const d2 = await checkRestoredDisk(repo, `${guest.name}/vdb`, r.json.disks[1].version, 'disk2', work);
      // Both disks were taken at one instant while the writer ran: their logs end within a record.
      expect(d1.lastRecord).toBeGreaterThanOrEqual(before);
      expect(Math.abs(d1.lastRecord - d2.lastRecord)).toBeLessThanOrEqual(1);

      await guest.waitForWriter(40);
      const again = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--block-size', '256K', '--json'], { env: { LIBVIRT_DEFAULT_URI: 'qemu:///system' } });
      expect(again.code, again.stderr).toBe(0);
      for (const d of again.json.disks) {
        expect(d.parentVersion).not.toBeNull();
        expect(d.changedBlocks).toBeLessThan(d.blocks / 4);
      }
      if (process.env.BLOCKREP_TEST_VERBOSE) console.log('second run', JSON.stringify({ durationMs: again.json.durationMs, snapshot: again.json.snapshot, overlayMs: again.json.disks.map((d: { overlayMs: number }) => d.overlayMs) }));
      const d1b = await checkRestoredDisk(repo, `${guest.name}/vda`, again.json.disks[0].version, 'disk1', work);
      expect(d1b.lastRecord).toBeGreaterThan(d1.lastRecord);
    });

    it('--disks picks one disk; the other gets no snapshot; a stale overlay file of a killed run is removed first', async () => {
      await writeFile(`${guest.images.disk2}.blockrep-overlay.qcow2`, 'left by a run killed long ago');
      const r = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--disks', 'vdb', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.disks.map((d: { disk: string }) => d.disk)).toEqual([`${guest.name}/vdb`]);
      expect(r.json.warnings).toEqual([expect.stringContaining(`removed ${guest.images.disk2}.blockrep-overlay.qcow2`)]);
    });

    it('kill -9 after the snapshot, a leftover commit job on one disk: backup refuses, recover puts the domain right', async () => {
      const run = startCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'snapshot-taken' });
      await run.waitForStderr('test hold at snapshot-taken');
      run.child.kill('SIGKILL');
      expect((await run.exit).code).toBe(137);
      const layers = await guest.layers();
      expect(layers.live.map((l) => l[1])).toEqual([`${guest.images.disk1}.blockrep-overlay.qcow2`, `${guest.images.disk2}.blockrep-overlay.qcow2`]);
      // libvirt changed the persistent definition too: a reboot would come up on the overlays.
      expect(layers.persistent.map((l) => l[1])).toEqual([`${guest.images.disk1}.blockrep-overlay.qcow2`, `${guest.images.disk2}.blockrep-overlay.qcow2`]);

      const refused = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json']);
      expect(refused.code).toBe(10);
      expect(refused.json).toMatchObject({ ok: false, code: 'RECOVERY_NEEDED', message: expect.stringContaining(`blockrep recover --domain ${guest.name}`) });

      // Another leftover: an active commit that reached "ready" and was never pivoted.
      await virshOk(['blockcommit', guest.name, 'vda', '--active', '--shallow']);
      for (let i = 0; i < 100 && !(await guest.layers()).live[0]![3].includes('+mirror'); i++) await new Promise((r) => setTimeout(r, 100));

      const rec = await runCli(['recover', '--domain', guest.name, '--json']);
      expect(rec.code, rec.stderr).toBe(0);
      expect(rec.json).toMatchObject({ ok: true, domain: guest.name, agent: 'ok', thawedFilesystems: 0 });
      expect(rec.json.jobs).toEqual([{ disk: 'vda', type: expect.stringContaining('Commit'), action: 'aborted' }]);
      expect(rec.json.committed).toEqual([
        { disk: 'vda', overlay: `${guest.images.disk1}.blockrep-overlay.qcow2`, base: guest.images.disk1 },
        { disk: 'vdb', overlay: `${guest.images.disk2}.blockrep-overlay.qcow2`, base: guest.images.disk2 },
      ]);
      expect(rec.json.removedFiles.sort()).toEqual([`${guest.images.disk1}.blockrep-overlay.qcow2`, `${guest.images.disk2}.blockrep-overlay.qcow2`]);

      const again = await runCli(['recover', '--domain', guest.name, '--json']);
      expect(again.json).toMatchObject({ ok: true, thawedFilesystems: 0, jobs: [], committed: [], removedFiles: [] });
    });

    it('kill -9 while the first disk commits and the second is still on its overlay, then recover', async () => {
      const run = startCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'disk-scanned' });
      await run.waitForStderr('test hold at disk-scanned');
      run.child.kill('SIGKILL');
      expect((await run.exit).code).toBe(137);
      expect((await guest.layers()).live[1]![1]).toBe(`${guest.images.disk2}.blockrep-overlay.qcow2`);
      const rec = await runCli(['recover', '--domain', guest.name, '--json']);
      expect(rec.code, rec.stderr).toBe(0);
      expect(rec.json.committed.map((c: { disk: string }) => c.disk)).toContain('vdb');
    });

    it('a disk whose read fails (its repository lock held by another writer): the other disk is backed up, both overlays committed back', async () => {
      const r0 = await openRepository(repo);
      const lock = await r0.lockDisk(`${guest.name}/vda`, 'backup');
      try {
        const r = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json']);
        expect(r.code, r.stderr).toBe(5);
        expect(r.json).toMatchObject({ ok: false, code: 'REPO_LOCKED', failures: [{ disk: `${guest.name}/vda`, code: 'REPO_LOCKED' }] });
        expect(r.json.disks.map((d: { disk: string }) => d.disk)).toEqual([`${guest.name}/vdb`]);
      } finally {
        await lock.release();
      }
    });

    it('SIGINT after the snapshot: the overlays are committed back, nothing published (exit 130)', async () => {
      const run = startCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'snapshot-taken' });
      await run.waitForStderr('test hold at snapshot-taken');
      expect((await guest.overlayFiles()).length).toBe(2);
      run.child.kill('SIGINT');
      const r = await run.exit;
      expect(r.code, r.stderr).toBe(130);
      expect(r.json).toMatchObject({ ok: false, code: 'INTERRUPTED' });
    });

    it('blockrep run: a job configuration with a domain entry, checked with --dry-run, then backed up', async () => {
      const config = join(dir, 'blockrep.yaml');
      await writeFile(config, `repository: {url: ${repo}}\nvms:\n  - domain: ${guest.name}\n    connect: qemu:///system\n    disks: [vda]\n    method: snapshot\n    quiesce: require\n`);
      const dry = await runCli(['run', '--config', config, '--dry-run', '--json']);
      expect(dry.code, dry.stdout + dry.stderr).toBe(0);
      expect(dry.json.vms[0].checks.map((c: { check: string; status: string }) => [c.check, c.status])).toEqual([
        ['domain', 'ok'],
        ['disks', 'ok'],
        ['agent', 'ok'],
      ]);
      const r = await runCli(['run', '--config', config, '--json']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.json.vms[0]).toMatchObject({ vm: guest.name, kind: 'libvirt', method: 'snapshot', status: 'ok', quiesced: true });
      expect(r.json.vms[0].disks.map((d: { disk: string }) => d.disk)).toEqual([`${guest.name}/vda`]);
    });

    it('a paused domain: a crash-consistent backup with a warning (its agent cannot answer); --require-quiesce refuses', async () => {
      await virshOk(['suspend', guest.name]);
      try {
        const r = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json']);
        expect(r.code, r.stderr).toBe(0);
        expect(r.json).toMatchObject({ ok: true, quiesced: false, warnings: [expect.stringContaining('paused')] });
        const strict = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--require-quiesce', '--json']);
        expect(strict.code).toBe(8);
        expect(strict.json).toMatchObject({ ok: false, code: 'AGENT_UNAVAILABLE' });
      } finally {
        await virshOk(['resume', guest.name]);
      }
    });

    it('a guest left frozen: backup refuses (RECOVERY_NEEDED), recover thaws it', async () => {
      await virshOk(['domfsfreeze', guest.name]);
      const refused = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json']);
      expect(refused.code).toBe(10);
      expect(refused.json).toMatchObject({ ok: false, code: 'RECOVERY_NEEDED', message: expect.stringContaining('frozen') });
      // The failed snapshot left no overlay, and the guest is still frozen (blockrep did not thaw what it did not freeze).
      expect(await guest.overlayFiles()).toEqual([]);
      expect(await guest.freezeStatus()).toBe('frozen');
      const rec = await runCli(['recover', '--domain', guest.name, '--json']);
      expect(rec.code, rec.stderr).toBe(0);
      expect(rec.json).toMatchObject({ ok: true, thawedFilesystems: 2, committed: [] });
    });

    it('a block job that is not blockrep\'s: BLOCK_JOB_ACTIVE, nothing touched', async () => {
      // A shallow copy of vdb to a file: a job blockrep must leave alone.
      const copy = join(guest.dir, 'copy.raw');
      await virshOk(['blockcopy', guest.name, 'vdb', copy, '--transient-job']);
      try {
        const r = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--repo', repo, '--json']);
        expect(r.code).toBe(5);
        expect(r.json).toMatchObject({ ok: false, code: 'BLOCK_JOB_ACTIVE', details: { disk: 'vdb' } });
        expect(await guest.overlayFiles()).toEqual([]);
      } finally {
        await virshOk(['blockjob', guest.name, 'vdb', '--abort']);
      }
    });

    it('usage: an unknown --method; --qmp and --domain together are refused', async () => {
      const api = await runCli(['backup', '--domain', guest.name, '--repo', repo, '--method', 'copy', '--json']);
      expect(api.code).toBe(2);
      expect(api.json).toMatchObject({ ok: false, code: 'USAGE', message: expect.stringContaining('--method must be one of snapshot, backup-api, auto') });
      const both = await runCli(['backup', '--domain', guest.name, '--qmp', join(dir, 'x.sock'), '--repo', repo, '--json']);
      expect(both.code).toBe(2);
    });
  });

  it('a domain that does not exist: DOMAIN_NOT_FOUND (exit 3); libvirt unreachable: LIBVIRT_UNAVAILABLE (exit 8)', async () => {
    const none = await runCli(['backup', '--domain', `no-such-${suffix}`, '--repo', repo, '--json']);
    expect(none.code).toBe(3);
    expect(none.json).toMatchObject({ ok: false, code: 'DOMAIN_NOT_FOUND', message: expect.stringContaining(`no-such-${suffix}`) });
    const rec = await runCli(['recover', '--domain', `no-such-${suffix}`, '--json']);
    expect(rec.code).toBe(3);
    const down = await runCli(['backup', '--domain', guest.name, '--method', 'snapshot', '--connect', `qemu:///system?socket=${join(dir, 'no-libvirt.sock')}`, '--repo', repo, '--json']);
    expect(down.code).toBe(8);
    expect(down.json).toMatchObject({ ok: false, code: 'LIBVIRT_UNAVAILABLE', message: expect.stringContaining('--connect') });
  });

  it('a domain that is shut off: DOMAIN_NOT_RUNNING (exit 8), its files untouched', async () => {
    stopped = await LibvirtGuest.create(join(dir, 'off'), `blockrep-off-${suffix}`, { start: false });
    const r = await runCli(['backup', '--domain', stopped.name, '--repo', repo, '--json']);
    expect(r.code).toBe(8);
    expect(r.json).toMatchObject({ ok: false, code: 'DOMAIN_NOT_RUNNING', message: expect.stringContaining('shut off') });
    expect(await stopped.overlayFiles()).toEqual([]);
    // recover on a shut-off domain with nothing to do says so and succeeds.
    const rec = await runCli(['recover', '--domain', stopped.name, '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(rec.json).toMatchObject({ ok: true, committed: [], removedFiles: [] });
    expect(await exists(stopped.images.disk1)).toBe(true);
    expect((await virsh(['domstate', stopped.name])).stdout.trim()).toBe('shut off');
  });
});
