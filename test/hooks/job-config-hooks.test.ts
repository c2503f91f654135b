import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadJobConfig, type LiveVmJob } from '../../src/config/job-config.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/** The `hooks` key of the job configuration: defaults merged key by key, and its mistakes. */

let dir: string;
let n = 0;
beforeAll(async () => {
  dir = await tempDir('blockrep-hooks-config-');
});

async function load(body: string): Promise<LiveVmJob[]> {
  const file = join(dir, `c${++n}.yaml`);
  await writeFile(file, `repository:\n  url: ${join(dir, 'repo')}\n${body}`);
  return (await loadJobConfig(file)).vms as LiveVmJob[];
}

async function mistakes(body: string): Promise<string> {
  try {
    await load(body);
  } catch (err) {
    if (!isBlockrepError(err)) throw err;
    expect(err.code).toBe('CONFIG_INVALID');
    return err.message;
  }
  throw new Error('no error');
}

describe('job configuration: hooks', () => {
  it('reads lists as argv and strings as /bin/sh commands; a VM overrides defaults key by key', async () => {
    const vms = await load(
      [
        'defaults:',
        '  hooks: {beforeFreeze: [/usr/local/bin/pause, --all], afterThaw: "resume --all && echo ok", timeout: 45s}',
        'vms:',
        '  - {name: a, qmp: /run/a.qmp}',
        '  - {name: b, qmp: /run/b.qmp, hooks: {beforeFreeze: [/bin/true], onFailure: continue}}',
        '  - {name: c, qmp: /run/c.qmp, quiesce: off}',
        '',
      ].join('\n'),
    );
    expect(vms[0]!.hooks).toEqual({ beforeFreeze: { argv: ['/usr/local/bin/pause', '--all'] }, afterThaw: { shell: 'resume --all && echo ok' }, timeoutMs: 45_000, onFailure: 'abort' });
    expect(vms[1]!.hooks).toEqual({ beforeFreeze: { argv: ['/bin/true'] }, afterThaw: { shell: 'resume --all && echo ok' }, timeoutMs: 45_000, onFailure: 'continue' });
    expect(vms[2]!.hooks).toEqual(vms[0]!.hooks);
    const none = await load('vms:\n  - {name: a, qmp: /run/a.qmp, hooks: {timeout: 5s}}\n');
    expect(none[0]!.hooks).toBeUndefined();
    const defaults = await load('vms:\n  - {name: a, qmp: /run/a.qmp, hooks: {afterThaw: [x]}}\n');
    expect(defaults[0]!.hooks).toEqual({ afterThaw: { argv: ['x'] }, timeoutMs: 30_000, onFailure: 'abort' });
  });

  it('reports each mistake with its path and what to write', async () => {
    const m = await mistakes(
      [
        'vms:',
        '  - name: a',
        '    qmp: /run/a.qmp',
        '    hooks:',
        '      beforeFreez: [x]',
        '      afterThaw: []',
        '      timeout: forever',
        '      onFailure: ignore',
        '',
      ].join('\n'),
    );
    expect(m).toContain('vms[0].hooks.beforeFreez: unknown key "beforeFreez" — did you mean "beforeFreeze"?');
    expect(m).toContain('vms[0].hooks.afterThaw: the list is empty');
    expect(m).toMatch(/vms\[0\]\.hooks\.timeout: expected a duration above 0 and at most 10m, got .*forever.* — write e.g. timeout: 30s/);
    expect(m).toMatch(/vms\[0\]\.hooks\.onFailure: expected abort or continue/);
    // Checks across keys come once the file has the right shape.
    expect(await mistakes('vms:\n  - name: b\n    images: [/var/lib/b.qcow2]\n    hooks: {beforeFreeze: [x]}\n')).toContain(
      'vms[0].hooks: hooks is for running VMs (with qmp)',
    );
    expect(await mistakes('vms:\n  - {name: a, qmp: /run/a.qmp, hooks: {beforeFreeze: ""}}\n')).toMatch(/vms\[0\]\.hooks\.beforeFreeze: /);
    expect(await mistakes('vms:\n  - {name: a, qmp: /run/a.qmp, hooks: {timeout: 11m, beforeFreeze: [x]}}\n')).toContain('vms[0].hooks.timeout');
  });

  it('blockrep run --dry-run checks that the hook programs exist, without running them', async () => {
    const file = join(dir, 'dry.yaml');
    const marker = join(dir, 'must-not-exist');
    await writeFile(
      file,
      [
        `repository: {url: ${join(dir, 'dry-repo')}}`,
        'vms:',
        `  - {name: a, qmp: ${join(dir, 'a.qmp')}, hooks: {beforeFreeze: [/nonexistent/app-pause], afterThaw: "touch ${marker}"}}`,
        `  - {name: b, qmp: ${join(dir, 'b.qmp')}, hooks: {beforeFreeze: [/nonexistent/app-pause], onFailure: continue}}`,
        `  - {name: c, qmp: ${join(dir, 'c.qmp')}, hooks: {beforeFreeze: [sh, -c, "touch ${marker}"]}}`,
        '',
      ].join('\n'),
    );
    const r = await runCli(['run', '--config', file, '--dry-run', '--json']);
    const [a, b, c] = r.json.vms;
    expect(a.checks[0]).toMatchObject({ check: 'hooks', status: 'failed', code: 'HOOK_FAILED', message: expect.stringContaining('/nonexistent/app-pause is not an executable file') });
    expect(b.checks[0]).toMatchObject({ check: 'hooks', status: 'warning' });
    expect(c.checks[0]).toEqual({ check: 'hooks', status: 'ok', message: 'host hooks found: beforeFreeze (sh)' });
    await expect(readFile(marker)).rejects.toThrow();
  });
});
