import { describe, expect, it } from 'vitest';
import {
  backupXml,
  checkpointChain,
  checkpointPrefix,
  checkpointXml,
  isBlockrepBackupPath,
  isBlockrepCheckpoint,
  newCheckpointName,
  parseBackupXml,
  parseCheckpointXml,
  parseVirshVersion,
  versionAtLeast,
} from '../../src/libvirt/index.js';

/**
 * The backup-api method's texts without a daemon: the backup and checkpoint XML blockrep writes,
 * libvirt's answers it reads (backup-dumpxml, checkpoint-dumpxml, virsh version) as libvirt 9.0
 * prints them, and the names that mark checkpoints and work files as blockrep's.
 */

describe('checkpoint names and chains', () => {
  it('names are per repository, recognisable, and sort by time', () => {
    const a = newCheckpointName('repo-1', new Date('2025-01-02T03:04:05.006Z'));
    const b = newCheckpointName('repo-1', new Date('2025-01-02T03:04:05.007Z'));
    expect(a).toMatch(/^blockrep-[0-9a-f]{12}-20250102T030405006Z-[0-9a-f]{6}$/);
    expect(a.startsWith(checkpointPrefix('repo-1'))).toBe(true);
    expect(a.startsWith(checkpointPrefix('repo-2'))).toBe(false);
    expect([b, a].sort()).toEqual([a, b]);
    expect(isBlockrepCheckpoint(a)).toBe(true);
    expect(isBlockrepCheckpoint('blockrep-nightly')).toBe(false);
  });
  it('a chain changes with the repository, the disk and the domain uuid', () => {
    const c = checkpointChain('r', 'web/vda', '6f1c3a52-0000-4000-8000-000000000001');
    expect(c).toMatch(/^[0-9a-f]{32}$/);
    expect(checkpointChain('r', 'web/vda', '6F1C3A52-0000-4000-8000-000000000001')).toBe(c);
    expect(new Set([c, checkpointChain('r2', 'web/vda', '6f1c3a52-0000-4000-8000-000000000001'), checkpointChain('r', 'web/vdb', '6f1c3a52-0000-4000-8000-000000000001'), checkpointChain('r', 'web/vda', '6f1c3a52-0000-4000-8000-000000000002')]).size).toBe(4);
  });
});

describe('what blockrep writes', () => {
  it('a pull-mode backup: per disk full or incremental, scratch files in the work folder, the other disks left out', () => {
    const xml = backupXml('/run/blockrep/backup-0123456789abcdef/nbd.sock', '/run/blockrep/backup-0123456789abcdef', [
      { target: 'vda', mode: 'incremental', checkpoint: "blockrep-abc-1'" },
      { target: 'vdb', mode: 'full' },
    ], ['sda']);
    expect(xml).toContain(`<domainbackup mode='pull'>`);
    expect(xml).toContain(`<server transport='unix' socket='/run/blockrep/backup-0123456789abcdef/nbd.sock'/>`);
    expect(xml).toContain(`<disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='blockrep-abc-1&apos;'>`);
    expect(xml).toContain(`<disk name='vdb' backup='yes' type='file' backupmode='full'>`);
    expect(xml).toContain(`<scratch file='/run/blockrep/backup-0123456789abcdef/vdb.scratch.qcow2'/>`);
    expect(xml).toContain(`<disk name='sda' backup='no'/>`);
    // What libvirt gives back for it parses (the round trip of the fields blockrep reads).
    expect(parseBackupXml(xml).disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
    expect(isBlockrepBackupPath('/run/blockrep/backup-0123456789abcdef/nbd.sock')).toBe(true);
    expect(isBlockrepBackupPath('/var/lib/libvirt/images/nbd.sock')).toBe(false);
  });
  it('a checkpoint: a bitmap on qcow2 disks only', () => {
    const xml = checkpointXml('blockrep-x', [
      { target: 'vda', bitmap: true },
      { target: 'vdb', bitmap: false },
    ]);
    expect(parseCheckpointXml(xml)).toEqual({ name: 'blockrep-x', bitmapDisks: ['vda'] });
  });
});

describe("what libvirt answers (9.0's output)", () => {
  it('backup-dumpxml of a running pull-mode job', () => {
    const job = parseBackupXml(`<domainbackup mode='pull' id='1'>
  <incremental>c0</incremental>
  <server transport='unix' socket='/run/blockrep/backup-0123456789abcdef/nbd.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='vda' exportbitmap='backup-vda'>
      <driver type='qcow2'/>
      <scratch file='/run/blockrep/backup-0123456789abcdef/vda.scratch.qcow2'/>
    </disk>
    <disk name='vdb' backup='yes' type='file' backupmode='full' exportname='vdb'>
      <driver type='qcow2'/>
      <scratch file='/run/blockrep/backup-0123456789abcdef/vdb.scratch.qcow2'/>
    </disk>
    <disk name='sda' backup='no'/>
  </disks>
</domainbackup>`);
    expect(job).toEqual({
      socket: '/run/blockrep/backup-0123456789abcdef/nbd.sock',
      disks: [
        { target: 'vda', exportName: 'vda', bitmap: 'backup-vda' },
        { target: 'vdb', exportName: 'vdb', bitmap: undefined },
      ],
    });
  });
  it('checkpoint-dumpxml --no-domain', () => {
    const c = parseCheckpointXml(`<domaincheckpoint>
  <name>blockrep-a</name>
  <creationTime>1700000000</creationTime>
  <parent><name>other</name></parent>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='blockrep-a'/>
    <disk name='vdb' checkpoint='no'/>
  </disks>
</domaincheckpoint>`);
    expect(c).toEqual({ name: 'blockrep-a', bitmapDisks: ['vda'] });
  });
  it('refuses what is not a checkpoint or a backup job', () => {
    expect(() => parseCheckpointXml('<domain><name>x</name></domain>')).toThrow(expect.objectContaining({ code: 'LIBVIRT_ERROR' }));
    expect(() => parseBackupXml('<domainbackup><disks><disk/></disks></domainbackup>')).toThrow(expect.objectContaining({ code: 'LIBVIRT_ERROR' }));
  });
  it('virsh version: the daemon first, else the library; 7.6 is the least for backup-api', () => {
    const out = 'Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\nUsing API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.0\nRunning against daemon: 9.0.0\n';
    expect(parseVirshVersion(out)).toEqual([9, 0, 0]);
    expect(parseVirshVersion('Using library: libvirt 7.5.0\n')).toEqual([7, 5, 0]);
    expect(() => parseVirshVersion('nothing')).toThrow(expect.objectContaining({ code: 'LIBVIRT_ERROR' }));
    expect(versionAtLeast([9, 0, 0], [7, 6, 0])).toBe(true);
    expect(versionAtLeast([7, 6, 0], [7, 6, 0])).toBe(true);
    expect(versionAtLeast([7, 5, 9], [7, 6, 0])).toBe(false);
    expect(versionAtLeast([6, 10, 0], [7, 6, 0])).toBe(false);
  });
});
