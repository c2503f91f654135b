import { mkdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { checkRestoredDisk, skipQemuTests, startCli, TestGuest } from './support/test-guest.js';

/**
 * Live backup of a real guest that keeps writing (see support/test-guest.ts), through the CLI
 * as a user runs it. Consistency: every version of every disk restores to a filesystem that
 * e2fsck finds clean, whose record log is a gap-free prefix of what the guest wrote. Safety,
 * after every test: the VM runs on its original images with its original backing depth, no
 * blockrep overlay, job or lock is left, and the guest is thawed.
 */

describe.skipIf(skipQemuTests)('live backup of a running guest', () => {
  let dir: string;
  let guest: TestGuest;
  beforeAll(async () => {
    dir = await tempDir('blockrep-live-');
    guest = await TestGuest.boot(join(dir, 'vm'));
  }, 180_000);
  afterAll(async () => {
    await guest?.stop();
  });
  afterEach(async () => {
    await guest.expectSafe();
  });

  it('replicates both disks twice; each version restores clean, with a gap-free record log', async () => {
    const repo = join(dir, 'repo');
    const first = await runCli(['backup', '--qmp', guest.qmpSocket, '--qga', guest.qgaSocket, '--repo', repo, '--block-size', '64K', '--json']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json).toMatchObject({ ok: true, vm: 'testvm', quiesced: true, frozenMs: expect.any(Number), snapshot: { frozenFilesystems: 2 } });
    expect(first.json.disks.map((d: { disk: string }) => d.disk)).toEqual(['testvm/disk1', 'testvm/vd2']);
    for (const d of first.json.disks) {
      expect(d).toMatchObject({ imageBytes: 64 << 20, blockSize: 65536, blocks: 1024, parentVersion: null, overlayMs: expect.any(Number) });
      expect(d.overlayMs).toBeGreaterThan(0);
      expect(d.overlayMs).toBeGreaterThanOrEqual(d.durationMs);
    }
    expect(first.json.frozenMs).toBeGreaterThanOrEqual(first.json.snapshot.freezeMs + first.json.snapshot.transactionMs);
    await guest.expectSafe();

    await guest.waitForWriter(40);
    const second = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '64K', '--json']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.json).toMatchObject({ ok: true, quiesced: true, frozenMs: expect.any(Number) });
    for (const [i, d] of second.json.disks.entries()) {
      expect(d.parentVersion).toBe(first.json.disks[i].version);
      // Only what the guest wrote in between: a few blocks, not the disk.
      expect(d.changedBlocks).toBeGreaterThan(0);
      expect(d.changedBlocks).toBeLessThan(d.blocks / 4);
    }
    const written = await guest.writerCount();

    const work = await tempDir('blockrep-live-restore-');
    for (const [diskId, name] of [
      ['testvm/disk1', 'disk1'],
      ['testvm/vd2', 'disk2'],
    ] as const) {
      const i = diskId === 'testvm/disk1' ? 0 : 1;
      const v1 = await checkRestoredDisk(repo, diskId, first.json.disks[i].version, name, work);
      const v2 = await checkRestoredDisk(repo, diskId, second.json.disks[i].version, name, work);
      expect(v1.lastRecord).toBeGreaterThan(0);
      expect(v2.lastRecord).toBeGreaterThan(v1.lastRecord);
      expect(v2.lastRecord).toBeLessThanOrEqual(written + 20);
      expect(v2.filesChecked).toBeGreaterThan(0);
    }
    const verify = await runCli(['verify', '--repo', repo, '--json']);
    expect(verify.code, verify.stderr).toBe(0);
  });

  it('a send that fails for one disk still commits every overlay back; the other disk gets its version', async () => {
    const repo = join(dir, 'repo-sendfail');
    const first = await runCli(['backup', '--qmp', guest.qmpSocket, '--disks', 'disk1', '--repo', repo, '--json']);
    expect(first.code, first.stderr).toBe(0);
    // Another (live) process holds the repository lock of testvm/vd2.
    await mkdir(join(repo, 'locks'), { recursive: true });
    await writeFile(join(repo, 'locks', 'testvm%2Fvd2.lock'), JSON.stringify({ pid: process.ppid, host: hostname(), createdAt: new Date().toISOString(), purpose: 'backup' }));
    const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
    expect(r.code).toBe(5);
    expect(r.json).toMatchObject({ ok: false, code: 'REPO_LOCKED', quiesced: true, failures: [{ disk: 'testvm/vd2', code: 'REPO_LOCKED' }] });
    expect(r.json.disks.map((d: { disk: string }) => d.disk)).toEqual(['testvm/disk1']);
  });

  it('an agent that does not answer: falls back to a crash-consistent backup with a warning, or fails with --require-quiesce', async () => {
    const repo = join(dir, 'repo-noagent');
    // A port the guest never opened: query-chardev says so, no wait.
    const dead = await runCli(['backup', '--qmp', guest.qmpSocket, '--qga', guest.deadSocket, '--repo', repo, '--json']);
    expect(dead.code, dead.stderr).toBe(0);
    expect(dead.json).toMatchObject({ ok: true, quiesced: false, warnings: [expect.stringContaining('has not opened the agent')] });
    expect(dead.json.frozenMs).toBeUndefined();
    expect(dead.stderr).toContain('warning: no guest agent runs in the guest');
    await guest.expectSafe();

    // A port the guest holds open but never answers on: the resync times out.
    const silent = await runCli(['backup', '--qmp', guest.qmpSocket, '--qga', guest.silentSocket, '--require-quiesce', '--repo', repo, '--json']);
    expect(silent.code).toBe(8);
    expect(silent.json).toMatchObject({ ok: false, code: 'AGENT_UNAVAILABLE', message: expect.stringContaining('no guest agent answers') });
  });

  it('--no-quiesce --disks backs up only the disks named, without freezing', async () => {
    const repo = join(dir, 'repo-some');
    const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--no-quiesce', '--disks', 'vd2', '--vm', 'web01', '--repo', repo, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ ok: true, quiesced: false, vm: 'web01' });
    expect(r.json.frozenMs).toBeUndefined();
    expect(r.json.disks.map((d: { disk: string }) => d.disk)).toEqual(['web01/vd2']);
    const unknown = await runCli(['backup', '--qmp', guest.qmpSocket, '--disks', 'vd9', '--repo', repo, '--json']);
    expect(unknown.code).toBe(2);
    expect(unknown.json.message).toContain('its disks: disk1, vd2');
  });

  it('a second run on the same VM refuses while the first works; SIGTERM after the snapshot still commits back', async () => {
    const repo = join(dir, 'repo-two');
    const first = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'snapshot-taken' });
    await first.waitForStderr('test hold at snapshot-taken');
    const second = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
    expect(second.code).toBe(5);
    expect(second.json).toMatchObject({ ok: false, code: 'VM_LOCKED', message: expect.stringContaining(`by process ${first.child.pid}`) });
    const recover = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
    expect(recover.json).toMatchObject({ ok: false, code: 'VM_LOCKED' });
    first.child.kill('SIGTERM');
    const r = await first.exit;
    expect(r.code).toBe(130);
    expect(r.json).toMatchObject({ ok: false, code: 'INTERRUPTED', message: expect.stringContaining('runs on its own image again') });
  });

  it('SIGTERM while the guest is frozen thaws it and changes nothing', async () => {
    const repo = join(dir, 'repo-frozen');
    const run = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'frozen' });
    await run.waitForStderr('test hold at frozen');
    run.child.kill('SIGTERM');
    const r = await run.exit;
    expect(r.code).toBe(130);
    expect(r.json).toMatchObject({ ok: false, code: 'INTERRUPTED', message: expect.stringContaining('thawed') });
    await guest.waitForWriter(20);
  });

  it('recover on a VM that needs nothing does nothing', async () => {
    const r = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ ok: true, thawed: false, agentState: 'thawed', agent: 'ok', jobs: [], committed: [], removedFiles: [] });
    const text = await runCli(['recover', '--qmp', guest.qmpSocket, '--qga', guest.qgaSocket]);
    expect(text.stdout).toContain('nothing to recover');
  });
});
