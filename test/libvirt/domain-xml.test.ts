import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../../src/libvirt/domain-xml.js';
import { snapshotCandidates } from '../../src/libvirt/domain-snapshot.js';
import { virshError } from '../../src/libvirt/virsh.js';

/** The domain XML parser and virsh's error mapping, on text libvirt 9.0 printed here. No libvirtd needed. */

// A live definition during `blockcommit --active` (mirror ready), trimmed to what matters.
const LIVE = `<domain type='qemu' id='1'>
  <name>123</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vm/a/disk1.qcow2.blockrep-overlay.qcow2' index='4'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/vm/a/disk1.qcow2'/>
        <backingStore type='file' index='3'>
          <format type='raw'/>
          <source file='/vm/a/base &amp; more.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <mirror type='file' job='active-commit' ready='yes'>
        <format type='qcow2'/>
        <source file='/vm/a/disk1.qcow2' index='2'/>
      </mirror>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/lv' index='1'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='x'><host name='h' port='10809'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/vm/ro.raw'/>
      <target dev='vdd' bus='virtio'/>
      <readonly/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/run/x/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
</domain>`;

describe('parseDomainXml', () => {
  it('reads disks, the nested backing chain, the mirror of a running job and the agent channel', () => {
    const def = parseDomainXml(LIVE);
    expect(def.name).toBe('123');
    expect(def.agent).toEqual({ state: 'connected' });
    expect(def.disks.map((d) => [d.target, d.type, d.device, d.format, d.source, d.readonly])).toEqual([
      ['vda', 'file', 'disk', 'qcow2', '/vm/a/disk1.qcow2.blockrep-overlay.qcow2', false],
      ['vdb', 'block', 'disk', 'raw', '/dev/vg/lv', false],
      ['sda', 'file', 'cdrom', 'raw', undefined, true],
      ['vdc', 'network', 'disk', 'raw', undefined, false],
      ['vdd', 'file', 'disk', 'raw', '/vm/ro.raw', true],
    ]);
    expect(def.disks[0]!.chain).toEqual([
      { source: '/vm/a/disk1.qcow2', format: 'qcow2' },
      { source: '/vm/a/base & more.raw', format: 'raw' },
    ]);
    expect(def.disks[0]!.mirror).toEqual({ job: 'active-commit', ready: 'yes', source: '/vm/a/disk1.qcow2' });
    expect(def.disks[1]!.chain).toEqual([]);
    expect(def.disks[1]!.mirror).toBeUndefined();
  });

  it('a single disk and no channel (arrays of one), and an inactive definition without chains', () => {
    const def = parseDomainXml(`<domain type='kvm'><name>vm1</name><devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/vm/d.raw'/><target dev='vda'/></disk></devices></domain>`);
    expect(def.disks).toHaveLength(1);
    expect(def.disks[0]).toMatchObject({ target: 'vda', source: '/vm/d.raw', chain: [], mirror: undefined });
    expect(def.agent).toBeUndefined();
  });

  it('only file disks of the device type disk, writable, raw or qcow2, are snapshot candidates; the others say why not', () => {
    const { disks, skipped } = snapshotCandidates(parseDomainXml(LIVE));
    expect(disks.map((d) => d.target)).toEqual(['vda']);
    expect(skipped.map((s) => s.id)).toEqual(['vdb', 'vdc', 'vdd']);
  });

  it('refuses what is not a domain definition, with LIBVIRT_ERROR', () => {
    for (const bad of ['<domain><devices/></domain>', '<network><name>x</name></network>', `<domain><name>x</name><devices><disk type='file'><source file='/a'/></disk></devices></domain>`]) {
      expect(() => parseDomainXml(bad)).toThrow(expect.objectContaining({ code: 'LIBVIRT_ERROR' }));
    }
  });
});

describe('virshError', () => {
  const cases: Array<[string, string]> = [
    ["error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/nonexistent/sock': No such file or directory\n", 'LIBVIRT_UNAVAILABLE'],
    ["error: failed to get domain 'nope'\n", 'DOMAIN_NOT_FOUND'],
    ['error: Requested operation is not valid: domain is not running\n', 'DOMAIN_NOT_RUNNING'],
    ['error: Guest agent is not responding: QEMU guest agent is not connected\n', 'AGENT_UNAVAILABLE'],
    ["error: internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze': Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state\n", 'RECOVERY_NEEDED'],
    ["error: block copy still active: disk 'vda' already in active block job\n", 'BLOCK_JOB_ACTIVE'],
    ["error: invalid argument: disk 'vdz' not found in domain\n", 'LIBVIRT_ERROR'],
  ];
  it.each(cases)('%s → %s', (stderr, code) => {
    const e = virshError(stderr, ['snapshot-create-as'], 'vm1', undefined);
    expect(e.code).toBe(code);
    expect(e.details).toMatchObject({ libvirt: expect.any(String) });
  });
});
