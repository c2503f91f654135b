import { execFileSync } from 'node:child_process';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { checkRestoredDisk, skipQemuTests, startCli, TestGuest } from './support/test-guest.js';

/**
 * `blockrep run` end to end, as a nightly job runs it: one config with two running test guests
 * (backed up live, in parallel), one offline image, and one VM whose QMP socket is gone. The
 * missing VM fails alone: the others get versions that restore clean, the exit code is the
 * partial-failure code (13), and the report names the failure, its code and where it is
 * configured. Both guests are left as they were (own images, no overlay, job or lock, thawed).
 */

describe.skipIf(skipQemuTests)('blockrep run: a nightly job over live guests and an offline image', () => {
  let dir: string;
  let web: TestGuest;
  let db: TestGuest;
  let image: string;

  beforeAll(async () => {
    dir = await tempDir('blockrep-run-');
    // Small disks: the run and its restores stay quick; both guests boot at once.
    process.env.GUEST_DISK_SIZE = '16M';
    [web, db] = await Promise.all([TestGuest.boot(join(dir, 'web01'), 'web01'), TestGuest.boot(join(dir, 'db01'), 'db01')]);
    image = join(dir, 'archive.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '8M']);
    execFileSync('qemu-io', ['-f', 'qcow2', image, '-c', 'write -P 0x61 0 2M', '-c', 'write -P 0x62 5M 64k'], { stdio: 'ignore' });
  }, 120_000);
  afterAll(async () => {
    await Promise.all([web?.stop(), db?.stop()]);
  });

  const configFor = async (name: string, repo: string, parallel: number): Promise<string> => {
    const file = join(dir, name);
    await writeFile(
      file,
      [
        `repository:`,
        `  url: ${repo}`,
        `defaults:`,
        `  blockSize: 64K`,
        `  retention: {keepLast: 3}`,
        `parallel: ${parallel}`,
        `vms:`,
        `  - name: web01`,
        `    qmp: ${web.qmpSocket}`,
        `    qga: ${web.qgaSocket}`,
        `  - name: db01`,
        `    qmp: ${db.qmpSocket}`,
        `    quiesce: require`,
        // Named as a disk id and as a drive id: the run and its dry run must read them alike.
        `    disks: [db01/disk1, vd2]`,
        `  - name: archive`,
        `    images: [archive.qcow2]`,
        `  - name: lost`,
        `    qmp: ${join(dir, 'lost', 'qmp.sock')}`,
        '',
      ].join('\n'),
    );
    return file;
  };

  it('one VM gone: the other three are backed up, exit 13, the report names the failure; every version restores clean', async () => {
    const repo = join(dir, 'repo');
    const config = await configFor('nightly.yaml', repo, 2);
    const reportFile = join(dir, 'report.json');
    const r = await runCli(['run', '--config', config, '--json', '--log-format', 'json', '--report', reportFile]);
    expect(r.code, r.stderr).toBe(13);
    expect(r.json).toMatchObject({ ok: false, code: 'PARTIAL_FAILURE', summary: { vms: 4, ok: 3, failed: 1, notStarted: 0, disks: 5 } });
    expect(r.json.message).toBe(`1 of 4 VM(s) failed: lost [QMP_UNAVAILABLE]`);
    const byName = Object.fromEntries(r.json.vms.map((v: { vm: string }) => [v.vm, v]));
    for (const name of ['web01', 'db01']) {
      expect(byName[name]).toMatchObject({ status: 'ok', kind: 'live', quiesced: true, frozenMs: expect.any(Number), snapshot: { frozenFilesystems: 2 } });
      expect(byName[name].disks.map((d: { disk: string; status: string }) => [d.disk, d.status])).toEqual([
        [`${name}/disk1`, 'ok'],
        [`${name}/vd2`, 'ok'],
      ]);
      for (const d of byName[name].disks) expect(d).toMatchObject({ blockSize: 65536, blocks: 256, overlayMs: expect.any(Number), bytesSent: expect.any(Number) });
      expect(byName[name].retention).toMatchObject({ status: 'ok', report: { versionsKept: 2, versionsRemoved: 0 } });
    }
    expect(byName.archive).toMatchObject({ status: 'ok', kind: 'image', disks: [{ status: 'ok', disk: 'archive/archive', changedBlocks: 128, zeroBlocks: 128 - 33 }] });
    expect(byName.lost).toMatchObject({ status: 'failed', kind: 'live', code: 'QMP_UNAVAILABLE', disks: [], where: `${config}:17:5 vms[3]` });
    expect(byName.lost.message).toBe(`${config}:18:10 vms[3].qmp: no QMP socket at ${join(dir, 'lost', 'qmp.sock')}: the VM is not running, or QEMU listens elsewhere`);

    // The two live VMs ran at the same time (parallel: 2).
    const events = r.stderr.trimEnd().split('\n').map((l) => JSON.parse(l) as { event: string; vm?: string; level: string; code?: string });
    const order = events.filter((e) => e.event === 'vm-start' || e.event === 'vm-done' || e.event === 'vm-failed').map((e) => `${e.event} ${e.vm}`);
    expect(order.slice(0, 2)).toEqual(['vm-start web01', 'vm-start db01']);
    expect(events).toContainEqual(expect.objectContaining({ event: 'vm-failed', vm: 'lost', level: 'error', code: 'QMP_UNAVAILABLE' }));
    expect(JSON.parse(await readFile(reportFile, 'utf8'))).toEqual(r.json);

    await Promise.all([web.expectSafe(), db.expectSafe()]);

    // Every live version restores to a clean filesystem with a gap-free record log (two at a time).
    const work = await tempDir('blockrep-run-restore-');
    await Promise.all(
      ['web01', 'db01'].map(async (vm) => {
        for (const [i, diskName] of ['disk1', 'disk2'].entries()) {
          const d = byName[vm].disks[i];
          const restored = await checkRestoredDisk(repo, d.disk, d.version, diskName, work);
          expect(restored.lastRecord, d.disk).toBeGreaterThan(0);
        }
      }),
    );
    const out = join(work, 'archive.raw');
    const restored = await runCli(['restore', '--repo', repo, '--disk', 'archive/archive', '--to', out]);
    expect(restored.code, restored.stderr).toBe(0);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', out, image]);
  });

  it('--dry-run asks each monitor, agent, image and the repository, and changes nothing', async () => {
    const repo = join(dir, 'repo');
    const config = await configFor('nightly.yaml', repo, 2);
    const before = await listing(repo);
    const r = await runCli(['run', '--config', config, '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(13);
    expect(r.json).toMatchObject({ dryRun: true, code: 'PARTIAL_FAILURE', summary: { ok: 3, failed: 1 } });
    const byName = Object.fromEntries(r.json.vms.map((v: { vm: string }) => [v.vm, v]));
    for (const name of ['web01', 'db01']) {
      expect(byName[name].checks.map((c: { check: string; status: string }) => `${c.check} ${c.status}`)).toEqual([
        'qmp-socket ok',
        'qmp ok',
        'disks ok',
        'agent ok',
        'repository-access ok',
        'repository-access ok',
      ]);
      expect(byName[name].checks[2].message).toBe(`will back up ${name}/disk1, ${name}/vd2`);
      expect(byName[name].checks[3].message).toContain('answers guest-ping');
      expect(byName[name].checks[4].message).toMatch(new RegExp(`^${name}/disk1: latest version \\d{8}T`));
    }
    expect(byName.lost).toMatchObject({ status: 'failed', code: 'QMP_UNAVAILABLE', checks: [{ check: 'qmp-socket', status: 'failed' }] });
    expect(await listing(repo)).toEqual(before);
    await Promise.all([web.expectSafe(), db.expectSafe()]);
  });

  it('SIGINT: no VM is started after it, the running one cleans up, exit 130, the guest is left as it was', async () => {
    const repo = join(dir, 'repo-int');
    const config = await configFor('interrupted.yaml', repo, 1);
    const run = startCli(['run', '--config', config, '--json']);
    await run.waitForStderr('vm-start web01');
    run.child.kill('SIGINT');
    const r = await run.exit;
    expect(r.code, r.stderr).toBe(130);
    expect(r.json).toMatchObject({ ok: false, code: 'INTERRUPTED', interrupted: true });
    expect(r.json.vms.slice(1).map((v: { status: string }) => v.status)).toEqual(['not-started', 'not-started', 'not-started']);
    await web.expectSafe();
  });
});

/** Every file under `root` with its size and modification time. */
async function listing(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    const s = await stat(p);
    out[p] = `${s.size} ${s.mtimeMs}`;
  }
  return out;
}
