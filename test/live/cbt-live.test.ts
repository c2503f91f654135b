import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliResult } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';
import { checkRestoredDisk, exists, skipQemuTests, startCli, TestGuest } from './support/test-guest.js';

/**
 * Changed-block tracking of `backup --qmp` on the real test guest (its writer keeps writing;
 * pointed writes go through QEMU's block layer with HMP qemu-io). The oracle after every
 * scenario: pause the VM, take a bitmap-driven backup, then a --full-scan backup of the same
 * paused state: it must find 0 changed blocks. Scenarios: guest writes, writes made during a
 * previous backup (they reach the base through the commit), kill -9 of blockrep at each phase
 * plus recover, and QEMU restarts (clean quit; kill -9).
 */

interface DiskJson {
  disk: string;
  version: string;
  scan: 'full' | 'bitmap';
  scanReason?: string;
  changedBlocks: number;
  blocks: number;
  blockSize: number;
  bytesRead: number;
  sampledBlocks?: number;
}

const bitmapsSchema = z.array(
  z.object({ 'node-name': z.string(), image: z.object({ filename: z.string() }).loose(), 'dirty-bitmaps': z.array(z.object({ name: z.string(), persistent: z.boolean(), recording: z.boolean() }).loose()).optional() }).loose(),
);

describe.skipIf(skipQemuTests)('changed-block tracking on a live VM (QMP)', () => {
  let dir: string;
  let guest: TestGuest;
  let repo: string;
  beforeAll(async () => {
    dir = await tempDir('blockrep-cbt-live-');
    repo = join(dir, 'repo');
    await mkdir(join(dir, 'check'));
    guest = await TestGuest.boot(join(dir, 'vm'), 'cbtvm');
  }, 180_000);
  afterAll(async () => {
    await guest?.stop();
  });

  async function backup(extra: string[] = []): Promise<{ result: CliResult; disks: Record<string, DiskJson> }> {
    const result = await runCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '256K', '--json', ...extra]);
    expect(result.code, `${result.stdout}${result.stderr}`).toBe(0);
    const disks: Record<string, DiskJson> = {};
    for (const d of result.json.disks as DiskJson[]) disks[d.disk.split('/')[1]!] = d;
    return { result, disks };
  }

  async function hmp(command: string): Promise<string> {
    const out = await guest.withQmp(async (qmp) => qmp.execute('human-monitor-command', { 'command-line': command }, z.string()));
    if (/error|failed/i.test(out)) throw new Error(`${command}: ${out}`);
    return out;
  }
  // Pointed writes land in the last block group of each 64 MiB ext4 disk, which the guest's
  // filesystem leaves free (its metadata sits at the start with flex_bg): the guest stays sound.
  const writeDisk1 = (pattern: number, offset: string, length: string): Promise<string> => hmp(`qemu-io disk1 "write -P 0x${pattern.toString(16)} ${offset} ${length}"`);
  const writeDisk2 = (pattern: number, offset: string, length: string): Promise<string> => hmp(`qemu-io -d /machine/peripheral/vd2/virtio-backend "write -P 0x${pattern.toString(16)} ${offset} ${length}"`);

  /** blockrep's bitmaps on each disk's active node (the base between runs). */
  async function ownBitmaps(): Promise<Record<string, Array<{ name: string; persistent: boolean; recording: boolean }>>> {
    const nodes = await guest.withQmp((qmp) => qmp.execute('query-named-block-nodes', { flat: true }, bitmapsSchema));
    const out: Record<string, Array<{ name: string; persistent: boolean; recording: boolean }>> = {};
    for (const [key, file] of [
      ['disk1', guest.images.disk1],
      ['disk2', guest.images.disk2],
    ] as const) {
      const fmt = nodes.filter((n) => n.image.filename === file && (n['dirty-bitmaps'] ?? []).length > 0);
      out[key] = fmt.flatMap((n) => (n['dirty-bitmaps'] ?? []).filter((b) => b.name.startsWith('blockrep-')).map((b) => ({ name: b.name, persistent: b.persistent, recording: b.recording })));
    }
    return out;
  }

  /** Pause, bitmap backup, --full-scan backup of the same state: nothing changed. Returns the bitmap run. */
  async function oracle(expectScan: Record<string, string>): Promise<{ tracked: Record<string, DiskJson>; full: Record<string, DiskJson> }> {
    await hmp('stop');
    try {
      const tracked = await backup(['--no-quiesce']);
      for (const [disk, want] of Object.entries(expectScan)) {
        const d = tracked.disks[disk]!;
        expect(want === 'bitmap' ? d.scan : d.scanReason, `${disk}: ${JSON.stringify(d)}`).toBe(want);
      }
      const full = await backup(['--no-quiesce', '--full-scan']);
      for (const d of Object.values(full.disks)) {
        expect(d).toMatchObject({ scan: 'full', scanReason: 'full-scan-requested', changedBlocks: 0 });
      }
      return { tracked: tracked.disks, full: full.disks };
    } finally {
      await hmp('cont');
    }
  }

  it('first run reads everything; then only what the guest wrote; the full-scan oracle finds nothing more; restores are equal', async () => {
    const first = await backup();
    expect(first.disks.disk1).toMatchObject({ scan: 'full', scanReason: 'first-backup' });
    expect(first.disks.vd2).toMatchObject({ scan: 'full', scanReason: 'first-backup' });
    // One generation per disk: persistent on the qcow2 v3 image, transient on the raw one.
    const bitmaps = await ownBitmaps();
    expect(bitmaps.disk1).toEqual([expect.objectContaining({ persistent: true, recording: true })]);
    expect(bitmaps.disk2).toEqual([expect.objectContaining({ persistent: false, recording: true })]);

    await guest.waitForWriter(20);
    await writeDisk1(0x5a, '60M', '64k');
    await writeDisk2(0x6b, '61M', '300k');
    const { tracked, full } = await oracle({ disk1: 'bitmap', vd2: 'bitmap' });
    for (const d of Object.values(tracked)) {
      expect(d.changedBlocks).toBeGreaterThanOrEqual(1);
      // The dirty blocks and the sample, not the disk.
      expect(d.bytesRead).toBeLessThanOrEqual((d.changedBlocks + (d.sampledBlocks ?? 0) + 8) * d.blockSize);
      expect(d.bytesRead).toBeLessThan(d.blocks * d.blockSize);
    }
    expect(tracked.vd2!.changedBlocks).toBeGreaterThanOrEqual(2); // 300k at 61M spans two 256K blocks

    // A bitmap-driven version restores to exactly what the full read stored, and is a clean disk.
    const digest = async (disk: string, version: string): Promise<string> => {
      const to = join(dir, `restore-${version}.raw`);
      const r = await runCli(['restore', '--repo', repo, '--disk', disk, '--version', version, '--to', to, '--force']);
      expect(r.code, r.stderr).toBe(0);
      const h = createHash('sha256');
      for await (const c of createReadStream(to)) h.update(c as Buffer);
      return h.digest('hex');
    };
    for (const disk of ['disk1', 'vd2']) expect(await digest(`cbtvm/${disk}`, tracked[disk]!.version)).toBe(await digest(`cbtvm/${disk}`, full[disk]!.version));
  }, 180_000);

  it('writes made during a backup reach the base through the commit, and the next run sees them', async () => {
    const before = await guest.writerCount();
    const during = await backup(); // the guest keeps writing, onto the overlays
    expect(during.disks.disk1!.scan).toBe('bitmap');
    expect(await guest.writerCount()).toBeGreaterThan(before);
    const { tracked } = await oracle({ disk1: 'bitmap', vd2: 'bitmap' });
    expect(tracked.disk1!.changedBlocks + tracked.vd2!.changedBlocks).toBeGreaterThan(0);
    // The guest's own writes only: its filesystems restore clean, logs without a gap.
    for (const [disk, name] of [
      ['disk1', 'disk1'],
      ['vd2', 'disk2'],
    ] as const)
      expect((await checkRestoredDisk(repo, `cbtvm/${disk}`, tracked[disk]!.version, name, join(dir, 'check'))).lastRecord).toBeGreaterThan(0);
  }, 120_000);

  // (commit-ready leaves the chain as a finished run does; live-faults.test.ts kills there.)
  it.each(['snapshot-taken', 'bitmap-exported', 'disk-scanned'])('kill -9 at %s, then recover: the next run is still never wrong', async (phase) => {
    const run = startCli(['backup', '--qmp', guest.qmpSocket, '--repo', repo, '--block-size', '256K', '--json'], { BLOCKREP_TEST_HOLD: phase });
    await run.waitForStderr(`test hold at ${phase}`);
    run.child.kill('SIGKILL');
    await run.exit;
    const rec = await runCli(['recover', '--qmp', guest.qmpSocket, '--json']);
    expect(rec.code, `${rec.stdout}${rec.stderr}`).toBe(0);
    if (phase === 'bitmap-exported') {
      expect(rec.json.removedExports).toHaveLength(1);
      expect(rec.json.stoppedNbdServer).toBe(true);
      expect(await exists(`${guest.qmpSocket}.blockrep-nbd`)).toBe(false);
    }
    if (phase === 'snapshot-taken' || phase === 'bitmap-exported') expect(rec.json.removedBitmaps.map((b: { name: string }) => b.name).join()).toMatch(/-read/);
    await guest.expectSafe();
    // recover leaves generations to the next backup; it knows which one is the reference.
    await oracle({ disk1: 'bitmap', vd2: 'bitmap' });
    const left = await ownBitmaps();
    expect(left.disk1, JSON.stringify(left)).toHaveLength(1);
    expect(left.disk2, JSON.stringify(left)).toHaveLength(1);
  }, 120_000);

  it('QEMU restarted: a clean quit keeps the qcow2 chain, the raw disk is read in full; after kill -9 of QEMU the qcow2 bitmap is inconsistent', async () => {
    await backup();
    await guest.stop(); // SIGTERM: QEMU closes its images cleanly, storing persistent bitmaps
    guest = await TestGuest.boot(guest.dir, 'cbtvm');
    await writeDisk1(0x7c, '62M', '64k');
    await oracle({ disk1: 'bitmap', vd2: 'qemu-restarted' });

    process.kill(guest.pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(guest.pid, 0);
        await new Promise((r) => setTimeout(r, 20));
      } catch {
        break;
      }
    }
    guest = await TestGuest.boot(guest.dir, 'cbtvm');
    await oracle({ disk1: 'bitmap-inconsistent', vd2: 'qemu-restarted' });
    // The inconsistent bitmap was replaced: the chain runs again.
    await oracle({ disk1: 'bitmap', vd2: 'bitmap' });
  }, 180_000);
});
