import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HOOK_OUTPUT_BYTES, runHostHook } from '../../src/app/host-hook.js';
import { tempDir } from '../support/temp-dir.js';

/** Host hooks as blockrep runs them: real processes, argv without a shell, strings with /bin/sh. */

describe('host hooks', () => {
  it('runs an argument list without a shell, with BLOCKREP_VM and BLOCKREP_PHASE', async () => {
    const r = await runHostHook({ argv: ['/bin/sh', '-c', 'echo "$BLOCKREP_VM $BLOCKREP_PHASE $0"', 'a b;$(x)'] }, 'before-freeze', 'web01', 5000);
    expect(r).toMatchObject({ phase: 'before-freeze', status: 'ok', exitCode: 0, output: 'web01 before-freeze a b;$(x)\n' });
    expect(r.command).toBe("/bin/sh -c 'echo \"$BLOCKREP_VM $BLOCKREP_PHASE $0\"' 'a b;$(x)'");
    // No shell: the metacharacters of an argument stay literal.
    const lit = await runHostHook({ argv: ['echo', '$HOME', '>', 'x'] }, 'after-thaw', 'web01', 5000);
    expect(lit.output).toBe('$HOME > x\n');
  });

  it('runs a string with /bin/sh -c', async () => {
    const r = await runHostHook({ shell: 'echo "$BLOCKREP_PHASE" | tr a-z A-Z; exit 0' }, 'after-thaw', 'db01', 5000);
    expect(r).toMatchObject({ status: 'ok', output: 'AFTER-THAW\n', command: 'echo "$BLOCKREP_PHASE" | tr a-z A-Z; exit 0' });
  });

  it('reports a non-zero exit, a signal and a program that does not exist', async () => {
    expect(await runHostHook({ shell: 'echo no >&2; exit 7' }, 'before-freeze', 'v', 5000)).toMatchObject({ status: 'failed', exitCode: 7, output: 'no\n', message: 'exited with status 7' });
    expect(await runHostHook({ shell: 'kill -KILL $$' }, 'before-freeze', 'v', 5000)).toMatchObject({ status: 'failed', signal: 'SIGKILL', message: 'was killed by SIGKILL' });
    const missing = await runHostHook({ argv: ['/nonexistent/blockrep-hook'] }, 'before-freeze', 'v', 5000);
    expect(missing).toMatchObject({ status: 'failed' });
    expect(missing.message).toContain('cannot run /nonexistent/blockrep-hook');
  });

  it('kills the whole process group at the time limit, even a child that ignores SIGTERM', async () => {
    const dir = await tempDir('blockrep-host-hook-');
    const pidFile = join(dir, 'child.pid');
    const started = Date.now();
    const r = await runHostHook({ shell: `sh -c 'trap "" TERM; echo $$ > ${pidFile}; while :; do sleep 0.1; done' & wait` }, 'before-freeze', 'v', 500);
    expect(r.status).toBe('timed-out');
    expect(r.message).toBe('did not finish within 500 ms and was killed');
    expect(Date.now() - started).toBeLessThan(5000);
    const child = Number(await readFile(pidFile, 'utf8'));
    // SIGKILL follows SIGTERM after a grace period: the stubborn child goes too.
    const deadline = Date.now() + 5000;
    let alive = true;
    while (alive && Date.now() < deadline) {
      const stat = await readFile(`/proc/${child}/stat`, 'utf8').catch(() => undefined);
      alive = stat !== undefined && !/^\d+ \(.*\) Z/.test(stat);
      if (alive) await new Promise((res) => setTimeout(res, 50));
    }
    expect(alive).toBe(false);
  });

  it('keeps only the end of a long output', async () => {
    const r = await runHostHook({ shell: 'head -c 100000 /dev/zero | tr "\\0" x; echo END' }, 'after-thaw', 'v', 5000);
    expect(r.output.length).toBeLessThanOrEqual(HOOK_OUTPUT_BYTES);
    expect(r.output.endsWith('xEND\n')).toBe(true);
  });
});
