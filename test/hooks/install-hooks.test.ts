import { spawnSync } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../support/temp-dir.js';
import { ROOT } from './support/db-servers.js';

/**
 * guest/install-hooks.sh on a Debian system without systemd (as this machine), run as root in a
 * private mount namespace whose /etc/qemu, /etc/default, /etc/init.d and /usr/local/lib are
 * empty tmpfs: what it installs, the -F it turns on, and that the installed runner fails the
 * freeze when a hook fails (thawing the hooks already frozen). Skipped with
 * BLOCKREP_SKIP_PRIVILEGED_TESTS=1 (it needs root for the namespace).
 */

const skip = process.env.BLOCKREP_SKIP_PRIVILEGED_TESTS === '1';

describe.skipIf(skip)('guest/install-hooks.sh', () => {
  it('installs the runner and the hooks, turns on -F and restarts the agent; the runner fails on a failing hook', async () => {
    const dir = await tempDir('blockrep-install-hooks-');
    const out = join(dir, 'out');
    await mkdir(out);
    const script = `
set -eu
for d in /etc/qemu /etc/default /etc/init.d /usr/local/lib; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
# Settings present before: kept. The database hooks are off so that servers of other tests do not matter.
printf 'MARIADB_HOOK=off\\nPG_HOOK=off\\n' >/etc/default/blockrep-fsfreeze
printf '#!/bin/sh\\necho "$@" >>${out}/init.d.calls\\n' >/etc/init.d/qemu-guest-agent
chmod +x /etc/init.d/qemu-guest-agent
sh ${join(ROOT, 'guest/install-hooks.sh')} >${out}/install.out 2>&1
cp /etc/default/qemu-guest-agent /etc/default/blockrep-fsfreeze ${out}/
ls /etc/qemu/fsfreeze-hook.d >${out}/hook.d
# A second run changes nothing more.
sh ${join(ROOT, 'guest/install-hooks.sh')} >/dev/null 2>&1
cp /etc/default/qemu-guest-agent ${out}/qemu-guest-agent.2
# The runner as qemu-ga runs it: a recording hook first, a failing one after it.
printf '#!/bin/sh\\necho "$1" >>${out}/record\\n' >/etc/qemu/fsfreeze-hook.d/00-record
printf '#!/bin/sh\\n[ "$1" = freeze ] && exit 3\\nexit 0\\n' >/etc/qemu/fsfreeze-hook.d/50-fail
chmod +x /etc/qemu/fsfreeze-hook.d/00-record /etc/qemu/fsfreeze-hook.d/50-fail
set +e
/usr/local/lib/blockrep/fsfreeze-hook freeze 2>${out}/freeze.err; echo $? >${out}/freeze.rc
rm /etc/qemu/fsfreeze-hook.d/50-fail
/usr/local/lib/blockrep/fsfreeze-hook freeze; echo $? >>${out}/freeze.rc
/usr/local/lib/blockrep/fsfreeze-hook thaw; echo $? >>${out}/freeze.rc
`;
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8' });
    expect(r.status, `${r.stderr}${await readFile(join(out, 'install.out'), 'utf8').catch(() => '')}`).toBe(0);
    const read = (f: string): Promise<string> => readFile(join(out, f), 'utf8');
    expect(await read('install.out')).toContain('guest family: debian; hooks in /etc/qemu/fsfreeze-hook.d');
    expect((await read('hook.d')).split('\n').filter(Boolean)).toEqual(['mariadb', 'postgresql']);
    expect(await read('qemu-guest-agent')).toBe('DAEMON_ARGS="-F/usr/local/lib/blockrep/fsfreeze-hook"\n');
    expect(await read('qemu-guest-agent.2')).toBe('DAEMON_ARGS="-F/usr/local/lib/blockrep/fsfreeze-hook"\n');
    expect(await read('blockrep-fsfreeze')).toBe('MARIADB_HOOK=off\nPG_HOOK=off\n');
    expect(await read('init.d.calls')).toBe('restart\nrestart\n');
    // Failing hook: exit 1, and the hook frozen before it was thawed again; then a clean freeze and thaw.
    expect((await read('freeze.rc')).split('\n').filter(Boolean)).toEqual(['1', '0', '0']);
    expect(await read('freeze.err')).toContain('50-fail freeze failed with status 3; thawing the others and refusing the freeze');
    expect((await read('record')).split('\n').filter(Boolean)).toEqual(['freeze', 'thaw', 'freeze', 'thaw']);
  });
});
