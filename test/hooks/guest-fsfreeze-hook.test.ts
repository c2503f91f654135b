import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { skipQemuTests, startCli, TestGuest } from '../live/support/test-guest.js';

/**
 * The fsfreeze hook path in the real test guest: qemu-ga runs with -F, /etc/qemu/fsfreeze-hook
 * is blockrep's runner (guest/fsfreeze-hook) and fsfreeze-hook.d holds a hook that records its
 * calls (on the console and in /run/fsfreeze-hook.record) and refuses the freeze while
 * /run/blockrep-fail-freeze exists, then the database hooks (no database in this guest: they
 * must do nothing). Also the host hooks of `blockrep run` around the same freeze.
 */

const recordSchema = z.object({ 'buf-b64': z.string(), eof: z.boolean() });

describe.skipIf(skipQemuTests)('fsfreeze hooks in a live guest', () => {
  let dir: string;
  let guest: TestGuest;
  let repo: string;

  /** The hook's calls as the console shows them, in order. */
  const consoleCalls = async (): Promise<string[]> => [...(await readFile(join(guest.dir, 'serial.log'), 'utf8')).matchAll(/blockrep-fsfreeze-hook (freeze|thaw)/g)].map((m) => m[1]!);
  /** The hook's record file in the guest, read through the agent's guest-file-* commands. */
  const guestRecord = async (): Promise<string[]> =>
    guest.withAgent(async (a) => {
      const h = await a.execute('guest-file-open', { path: '/run/fsfreeze-hook.record', mode: 'a+' }, z.number());
      try {
        await a.execute('guest-file-seek', { handle: h, offset: 0, whence: 'set' }, z.unknown());
        const r = await a.execute('guest-file-read', { handle: h, count: 65536 }, recordSchema);
        return Buffer.from(r['buf-b64'], 'base64').toString('utf8').split('\n').filter(Boolean);
      } finally {
        await a.execute('guest-file-close', { handle: h }, z.unknown());
      }
    });
  const failFreeze = async (on: boolean): Promise<void> =>
    guest.withAgent(async (a) => {
      if (on) {
        const h = await a.execute('guest-file-open', { path: '/run/blockrep-fail-freeze', mode: 'w' }, z.number());
        await a.execute('guest-file-close', { handle: h }, z.unknown());
      } else {
        // qemu-ga has no unlink: the hook checks for the file, so an agent-run rm is needed; use guest-exec.
        const pid = await a.execute('guest-exec', { path: '/bin/rm', arg: ['-f', '/run/blockrep-fail-freeze'] }, z.object({ pid: z.number() }));
        for (;;) {
          const s = await a.execute('guest-exec-status', { pid: pid.pid }, z.object({ exited: z.boolean() }));
          if (s.exited) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    });

  beforeAll(async () => {
    dir = await tempDir('blockrep-hook-guest-');
    repo = join(dir, 'repo');
    guest = await TestGuest.boot(join(dir, 'vm'), 'hookvm');
  }, 180_000);
  afterAll(async () => {
    await guest?.stop();
  });
  afterEach(async () => {
    await guest.expectSafe();
  });

  it('a live backup calls the hook with freeze before the snapshot and thaw after it, once each', async () => {
    expect(await consoleCalls()).toEqual([]);
    // blockrep holds QMP while it is held at a phase: look at the image folders instead.
    const overlayFiles = async (): Promise<string[]> => (await Promise.all(['a', 'b'].map((d) => readdir(join(guest.dir, d))))).flat().filter((n) => n.includes('.blockrep-overlay'));
    // Held while frozen: the hook has run freeze, not thaw, and no overlay exists yet.
    const atFrozen = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'frozen' });
    await atFrozen.waitForStderr('test hold at frozen');
    expect(await consoleCalls()).toEqual(['freeze']);
    expect(await overlayFiles()).toEqual([]);
    atFrozen.child.kill('SIGINT');
    expect((await atFrozen.exit).json).toMatchObject({ code: 'INTERRUPTED' });
    expect(await consoleCalls()).toEqual(['freeze', 'thaw']);

    // Held right after the snapshot: both overlays exist and thaw has run.
    const atSnapshot = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json'], { BLOCKREP_TEST_HOLD: 'snapshot-taken' });
    await atSnapshot.waitForStderr('test hold at snapshot-taken');
    expect(await overlayFiles()).toEqual(['disk1.qcow2.blockrep-overlay.qcow2', 'disk2.raw.blockrep-overlay.qcow2']);
    expect(await consoleCalls()).toEqual(['freeze', 'thaw', 'freeze', 'thaw']);
    atSnapshot.child.kill('SIGINT');
    expect((await atSnapshot.exit).json).toMatchObject({ code: 'INTERRUPTED' });
    await guest.expectSafe();

    // A whole backup: one freeze, one thaw, in that order; the report says it was quiesced.
    const before = await guestRecord();
    const r = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ ok: true, quiesced: true, snapshot: { frozenFilesystems: 2 } });
    expect(r.json.freezeFailure).toBeUndefined();
    expect((await guestRecord()).slice(before.length)).toEqual(['freeze', 'thaw']);
  });

  it('a failing guest hook: --require-quiesce backs up nothing (FREEZE_FAILED); without it, a warned crash-consistent backup', async () => {
    const versions = async (): Promise<number> => {
      const l = await runCli(['list', '--repo', repo, '--json']);
      return JSON.stringify(l.json).match(/"version"/g)?.length ?? 0;
    };
    await failFreeze(true);
    try {
      const stored = await versions();
      const before = await guestRecord();
      const refused = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--require-quiesce', '--json']);
      expect(refused.code, refused.stderr).toBe(9);
      expect(refused.json).toMatchObject({ ok: false, code: 'FREEZE_FAILED', message: expect.stringContaining('fsfreeze hook has failed') });
      expect(await versions()).toBe(stored);
      expect((await guestRecord()).slice(before.length)).toEqual(['freeze', 'refused', 'thaw']);
      await guest.expectSafe();

      const warned = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--json']);
      expect(warned.code, warned.stderr).toBe(0);
      expect(warned.json).toMatchObject({ ok: true, quiesced: false, freezeFailure: { code: 'FREEZE_FAILED' } });
      expect(warned.json.disks).toHaveLength(2);
      expect(warned.json.warnings.join('\n')).toContain('FREEZE_FAILED');
      expect(warned.stderr).toContain('crash-consistent only');
    } finally {
      await failFreeze(false);
    }
  });

  it('blockrep run: host hooks run around the freeze with BLOCKREP_VM and BLOCKREP_PHASE; a failing beforeFreeze aborts before anything is frozen', async () => {
    const trace = join(dir, 'host-hooks.trace');
    await writeFile(trace, '');
    const config = join(dir, 'hooks.yaml');
    const write = async (beforeFreeze: string): Promise<void> =>
      writeFile(
        config,
        [
          'repository:',
          `  url: ${repo}`,
          'defaults:',
          '  hooks:',
          `    afterThaw: [sh, -c, 'echo "$BLOCKREP_PHASE $BLOCKREP_VM" >> ${trace}']`,
          '    timeout: 20s',
          'vms:',
          '  - name: hookvm',
          `    qmp: ${guest.qmpSocket}`,
          '    hooks:',
          `      beforeFreeze: ${beforeFreeze}`,
          '',
        ].join('\n'),
      );

    await write(`'echo "$BLOCKREP_PHASE $BLOCKREP_VM" >> ${trace}; echo paused'`);
    const calls = (await consoleCalls()).length;
    const ok = await runCli(['run', '--config', config, '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    const vm = ok.json.vms[0];
    expect(vm).toMatchObject({ status: 'ok', quiesced: true, snapshot: { frozenFilesystems: 2 } });
    expect(vm.hooks).toEqual([
      expect.objectContaining({ phase: 'before-freeze', status: 'ok', exitCode: 0, output: 'paused\n' }),
      expect.objectContaining({ phase: 'after-thaw', status: 'ok', exitCode: 0 }),
    ]);
    expect((await readFile(trace, 'utf8')).split('\n').filter(Boolean)).toEqual(['before-freeze hookvm', 'after-thaw hookvm']);
    expect((await consoleCalls()).slice(calls)).toEqual(['freeze', 'thaw']);

    await writeFile(trace, '');
    await write(`[sh, -c, 'echo "$BLOCKREP_PHASE" >> ${trace}; echo app will not pause >&2; exit 3']`);
    const failed = await runCli(['run', '--config', config, '--json']);
    // Every VM of the run failed: exit 1 (RUN_FAILED); the VM says why.
    expect(failed.code).toBe(1);
    expect(failed.json.vms[0]).toMatchObject({ status: 'failed', code: 'HOOK_FAILED', disks: [] });
    expect(failed.json.vms[0].hooks).toEqual([
      expect.objectContaining({ phase: 'before-freeze', status: 'failed', exitCode: 3, output: 'app will not pause\n' }),
      expect.objectContaining({ phase: 'after-thaw', status: 'ok' }),
    ]);
    // The guest was never frozen; whatever beforeFreeze did was undone by afterThaw.
    expect((await consoleCalls()).slice(calls)).toEqual(['freeze', 'thaw']);
    expect((await readFile(trace, 'utf8')).split('\n').filter(Boolean)).toEqual(['before-freeze', 'after-thaw hookvm']);

    // A hook that hangs is killed at its timeout; with onFailure: continue the backup goes on.
    await writeFile(
      config,
      ['repository:', `  url: ${repo}`, 'vms:', '  - name: hookvm', `    qmp: ${guest.qmpSocket}`, '    hooks: {beforeFreeze: [sleep, "60"], timeout: 1s, onFailure: continue}', ''].join('\n'),
    );
    const slow = await runCli(['run', '--config', config, '--json']);
    expect(slow.code, slow.stderr).toBe(0);
    expect(slow.json.vms[0]).toMatchObject({ status: 'ok', quiesced: true });
    expect(slow.json.vms[0].hooks).toEqual([expect.objectContaining({ phase: 'before-freeze', status: 'timed-out' })]);
    expect(slow.json.vms[0].hooks[0].durationMs).toBeLessThan(10_000);
    expect(slow.json.vms[0].warnings.join('\n')).toContain('beforeFreeze (sleep 60) did not finish within 1000 ms');
  });
});
