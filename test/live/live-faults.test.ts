import { chmod, readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { checkRestoredDisk, skipQemuTests, sleep, startCli, TestGuest } from './support/test-guest.js';

/**
 * Faults on a real guest that keeps writing: blockrep killed with kill -9 at every step of a
 * live backup, each followed by `blockrep recover`; a snapshot folder QEMU cannot write; a
 * monitor held by another client (an agent that never answers is in live-backup.test.ts). After each: a clear error, the
 * VM on its original images, nothing of blockrep's left, the guest thawed and still writing.
 */

describe.skipIf(skipQemuTests)('live backup faults', () => {
  let dir: string;
  let guest: TestGuest;
  let repo: string;
  beforeAll(async () => {
    dir = await tempDir('blockrep-faults-');
    repo = join(dir, 'repo');
    guest = await TestGuest.boot(join(dir, 'vm'), 'faultvm');
  }, 180_000);
  afterAll(async () => {
    await guest?.stop();
  });
  afterEach(async () => {
    await guest.expectSafe();
    // ... and the guest still writes.
    await guest.waitForWriter(20);
  });

  it.each([
    ['frozen', 'while the guest is frozen'],
    ['snapshot-taken', 'after the snapshot'],
    ['disk-scanned', 'during the scan (first disk read, its commit under way, second disk on its overlay)'],
    ['commit-ready', 'during the commit (job READY, not completed)'],
  ])('kill -9 at %s (%s), then blockrep recover', async (phase) => {
    const run = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '256K', '--json'], { BLOCKREP_TEST_HOLD: phase });
    await run.waitForStderr(`test hold at ${phase}`);
    run.child.kill('SIGKILL');
    expect((await run.exit).code).toBe(137);

    // The state the kill left.
    if (phase === 'frozen') {
      expect(await guest.withAgent((a) => a.status())).toBe('frozen');
      const before = await guest.writerCount();
      await sleep(500);
      expect(await guest.writerCount()).toBeLessThanOrEqual(before + 20);
    }
    if (phase === 'snapshot-taken') {
      expect((await guest.layers()).map((l) => l.file)).toEqual([`${guest.images.disk1}.blockrep-overlay.qcow2`, `${guest.images.disk2}.blockrep-overlay.qcow2`]);
    }
    // A backup refuses to start on a VM in that state, and says what to do.
    if (phase !== 'disk-scanned') {
      const refused = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
      expect(refused.code).toBe(10);
      expect(refused.json).toMatchObject({ ok: false, code: 'RECOVERY_NEEDED', message: expect.stringContaining(`blockrep recover --qmp ${guest.qmpSocket}`) });
    }

    const rec = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(rec.json.ok).toBe(true);
    if (phase === 'frozen') expect(rec.json).toMatchObject({ thawed: true, agentState: 'frozen', committed: [], jobs: [] });
    if (phase === 'snapshot-taken') expect(rec.json.committed.map((c: { disk: string }) => c.disk)).toEqual(['disk1', 'vd2']);
    if (phase === 'disk-scanned') expect(rec.json.committed.map((c: { disk: string }) => c.disk)).toContain('vd2');
    if (phase === 'commit-ready') {
      // disk1's job waited READY; disk2's may have got there too before the kill.
      expect(rec.json.jobs.length).toBeGreaterThanOrEqual(1);
      for (const j of rec.json.jobs) expect(j).toMatchObject({ status: 'concluded' });
      expect(rec.json.jobs[0].error).toBeUndefined();
    }
    expect(rec.json.thawed).toBe(phase === 'frozen');

    const again = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
    expect(again.json).toMatchObject({ ok: true, thawed: false, jobs: [], committed: [], removedFiles: [] });
  });

  it('kill -9 at moments in between (no hold): recover always puts the VM right', async () => {
    // From start-up through freeze, snapshot, scan and commit: wherever the kill lands.
    for (const delayMs of [700, 850, 1000, 1150, 1300]) {
      const run = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '256K', '--json']);
      await sleep(delayMs);
      run.child.kill('SIGKILL');
      const r = await run.exit;
      const rec = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
      expect(rec.code, `after a kill at ${delayMs} ms (exit ${r.code}): ${rec.stdout}${rec.stderr}`).toBe(0);
      if (process.env.BLOCKREP_TEST_VERBOSE) console.log(delayMs, r.code, JSON.stringify({ thawed: rec.json.thawed, jobs: rec.json.jobs.length, committed: rec.json.committed.length, removed: rec.json.removedFiles.length }));
      await guest.expectSafe();
    }
  });

  it('a snapshot folder QEMU cannot write: SNAPSHOT_FAILED, the overlay QEMU made for the other disk removed', async () => {
    await chmod(join(guest.dir, 'b'), 0o555);
    try {
      const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
      expect(r.code).toBe(9);
      expect(r.json).toMatchObject({ ok: false, code: 'SNAPSHOT_FAILED', message: expect.stringContaining('unharmed'), details: { removed: [`${guest.images.disk1}.blockrep-overlay.qcow2`] } });
    } finally {
      await chmod(join(guest.dir, 'b'), 0o755);
    }
  });

  it('a monitor held by another client: QMP_BUSY; no monitor at all: QMP_UNAVAILABLE', async () => {
    const other = connect(guest.qmpSocket);
    await new Promise<void>((resolve) => other.once('data', () => resolve()));
    try {
      const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
      expect(r.code).toBe(8);
      expect(r.json).toMatchObject({ ok: false, code: 'QMP_BUSY', message: expect.stringContaining('another client') });
    } finally {
      other.destroy();
    }
    const none = await runCli(['backup', '--qmp', join(dir, 'no-such.sock'), '--repo', repo, '--json']);
    expect(none.code).toBe(8);
    expect(none.json).toMatchObject({ ok: false, code: 'QMP_UNAVAILABLE', message: expect.stringContaining('no such socket') });
  });

  it('after all of that the repository takes a good live backup that restores clean', async () => {
    const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '256K', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const work = await tempDir('blockrep-faults-restore-');
    const d1 = await checkRestoredDisk(repo, 'faultvm/disk1', r.json.disks[0].version, 'disk1', work);
    const d2 = await checkRestoredDisk(repo, 'faultvm/vd2', r.json.disks[1].version, 'disk2', work);
    expect(d1.lastRecord).toBeGreaterThan(0);
    expect(d2.lastRecord).toBeGreaterThan(0);
    // No lock is left; a temporary file of a lock write cut by kill -9 is not a lock (never read).
    const left = (await readdir(join(repo, 'locks')).catch(() => [] as string[])).filter((f) => !f.startsWith('.tmp-'));
    expect(left).toEqual([]);
  });
});
