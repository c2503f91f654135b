import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadJobConfig } from '../../src/config/job-config.js';

/** `vms: - domain: NAME` in the job configuration (no libvirtd needed). */

async function load(yaml: string): Promise<Awaited<ReturnType<typeof loadJobConfig>>> {
  const dir = await mkdtemp(join(tmpdir(), 'blockrep-jobcfg-'));
  try {
    const file = join(dir, 'blockrep.yaml');
    await writeFile(file, yaml);
    return await loadJobConfig(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('job configuration: libvirt domains', () => {
  it('a domain entry: its name is the domain, connect and disks are kept', async () => {
    const config = await load(`repository: {url: ./repo}\nvms:\n  - domain: mail01\n    connect: qemu:///system\n    disks: [vda]\n  - name: other\n    domain: web01\n    method: backup-api\n`);
    expect(config.vms[0]).toMatchObject({ kind: 'libvirt', name: 'mail01', domain: 'mail01', connect: 'qemu:///system', disks: ['vda'], quiesce: 'auto' });
    expect(config.vms[0]).not.toHaveProperty('method');
    expect(config.vms[1]).toMatchObject({ kind: 'libvirt', name: 'other', domain: 'web01', method: 'backup-api' });
  });

  it('refuses a domain with qmp or images, connect without domain, qga with domain, and an entry with no kind', async () => {
    const cases: Array<[string, string]> = [
      ['  - domain: a\n    qmp: /run/a.qmp\n', 'vms[0].domain: a VM is either'],
      ['  - domain: a\n    images: [/a.raw]\n', 'vms[0].images'],
      ['  - name: a\n    qmp: /run/a.qmp\n    connect: qemu:///system\n', 'vms[0].connect'],
      ['  - domain: a\n    qga: /run/a.qga\n', 'vms[0].qga'],
      ['  - domain: a\n    method: copy\n', 'vms[0].method'],
      ['  - name: a\n    qmp: /run/a.qmp\n    method: snapshot\n', 'vms[0].method'],
      ['  - name: a\n', 'vms[0]'],
      ['  - domain: a/b\n', 'vms[0].domain'],
      // Host hooks do not run around a libvirt snapshot yet: refused, never silently skipped.
      ['  - domain: a\n    hooks: {beforeFreeze: [/bin/true]}\n', 'vms[0].hooks: host hooks run around QEMU VMs (qmp) only'],
    ];
    const withDefaults = 'defaults: {hooks: {afterThaw: [/bin/true]}}\n';
    for (const [vm, path, head] of [...cases.map(([v, p]) => [v, p, ''] as const), ['  - domain: a\n', 'vms[0].domain: defaults.hooks would run', withDefaults] as const]) {
      const err = await load(`repository: {url: ./repo}\n${head}vms:\n${vm}`).then(
        () => undefined,
        (e: unknown) => e as { code: string; message: string },
      );
      expect(err, vm).toBeDefined();
      expect(err!.code).toBe('CONFIG_INVALID');
      expect(err!.message).toContain(path);
    }
  });
});
