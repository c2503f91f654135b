import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';
import { xmlReader } from './libvirt-xml.js';

/**
 * The parts of a libvirt domain definition (`virsh dumpxml`, live or `--inactive`) blockrep
 * uses: its disks (type, device, target, format, source, the nested backing chain, the mirror of
 * a running block job) and its guest-agent channel. Parsed with fast-xml-parser and checked with
 * zod: a definition that does not have the shape libvirt documents is refused, not guessed at.
 */

export interface BackingLayer {
  /** The file, device or volume path; undefined for a network source. */
  source: string | undefined;
  format: string | undefined;
}

export interface DomainDisk {
  /** file | block | network | volume | … */
  type: string;
  /** disk | cdrom | floppy | lun */
  device: string;
  /** The guest-side name (vda, sdb): what virsh calls the disk. */
  target: string;
  /** The driver's format of the active layer (raw, qcow2, …). */
  format: string | undefined;
  /** The active layer's file (type file) or device (type block); undefined for others or an empty drive. */
  source: string | undefined;
  readonly: boolean;
  /** The backing chain below the active layer, top first (live definitions only; often absent in --inactive). */
  chain: BackingLayer[];
  /** Present while a block copy or active commit runs on the disk (live definition). */
  mirror: { job: string | undefined; ready: string | undefined; source: string | undefined } | undefined;
}

export interface DomainDefinition {
  name: string;
  disks: DomainDisk[];
  /** The org.qemu.guest_agent.0 channel; state (live only): connected | disconnected. */
  agent: { state: string | undefined } | undefined;
}

const sourceSchema = z.object({
  '@_file': z.string().optional(),
  '@_dev': z.string().optional(),
  '@_volume': z.string().optional(),
  '@_pool': z.string().optional(),
  '@_name': z.string().optional(),
});
const formatSchema = z.object({ '@_type': z.string().optional() });
/** An empty element (`<backingStore/>`, `<readonly/>`) parses to ''. */
const empty = z.literal('');

interface RawBacking {
  '@_type'?: string | undefined;
  format?: z.infer<typeof formatSchema> | '' | undefined;
  source?: z.infer<typeof sourceSchema> | '' | undefined;
  backingStore?: RawBacking | '' | undefined;
}
const backingSchema: z.ZodType<RawBacking> = z.lazy(() =>
  z.object({
    '@_type': z.string().optional(),
    format: z.union([formatSchema, empty]).optional(),
    source: z.union([sourceSchema, empty]).optional(),
    backingStore: z.union([backingSchema, empty]).optional(),
  }),
);

const diskSchema = z.object({
  '@_type': z.string(),
  '@_device': z.string().default('disk'),
  driver: z.union([z.object({ '@_type': z.string().optional() }), empty]).optional(),
  source: z.union([sourceSchema, empty]).optional(),
  backingStore: z.union([backingSchema, empty]).optional(),
  mirror: z
    .object({
      '@_job': z.string().optional(),
      '@_ready': z.string().optional(),
      '@_file': z.string().optional(),
      source: z.union([sourceSchema, empty]).optional(),
    })
    .optional(),
  target: z.object({ '@_dev': z.string().min(1) }),
  readonly: z.unknown().optional(),
});

const channelSchema = z.object({
  '@_type': z.string().optional(),
  target: z.union([z.object({ '@_type': z.string().optional(), '@_name': z.string().optional(), '@_state': z.string().optional() }), empty]).optional(),
});

const domainSchema = z.object({
  domain: z.object({
    name: z.string().min(1),
    devices: z
      .union([
        z.object({
          disk: z.array(diskSchema).default([]),
          channel: z.array(channelSchema).default([]),
        }),
        empty,
      ])
      .optional(),
  }),
});

const readDomainXml = xmlReader(domainSchema, ['domain.devices.disk', 'domain.devices.channel']);

/** A chain deeper than this is not a definition libvirt wrote. */
const MAX_CHAIN = 256;

function pathOf(source: z.infer<typeof sourceSchema> | '' | undefined): string | undefined {
  if (source === undefined || source === '') return undefined;
  return source['@_file'] ?? source['@_dev'];
}

export function parseDomainXml(xml: string, what = 'the domain definition'): DomainDefinition {
  const domain = readDomainXml(xml, what).domain;
  const devices = domain.devices === '' || domain.devices === undefined ? { disk: [], channel: [] } : domain.devices;
  const disks: DomainDisk[] = devices.disk.map((d) => {
    const chain: BackingLayer[] = [];
    let b = d.backingStore;
    while (b !== undefined && b !== '' && (b.source !== undefined || b.format !== undefined)) {
      if (chain.length >= MAX_CHAIN) throw new BlockrepError('LIBVIRT_ERROR', `${what}: disk ${d.target['@_dev']} has a backing chain deeper than ${MAX_CHAIN}`);
      chain.push({ source: pathOf(b.source), format: b.format === '' ? undefined : b.format?.['@_type'] });
      b = b.backingStore;
    }
    return {
      type: d['@_type'],
      device: d['@_device'],
      target: d.target['@_dev'],
      format: d.driver === '' ? undefined : d.driver?.['@_type'],
      source: d['@_type'] === 'file' || d['@_type'] === 'block' ? pathOf(d.source) : undefined,
      readonly: d.readonly !== undefined,
      chain,
      mirror: d.mirror ? { job: d.mirror['@_job'], ready: d.mirror['@_ready'], source: pathOf(d.mirror.source) ?? d.mirror['@_file'] } : undefined,
    };
  });
  const agentChannel = devices.channel.find((c) => c.target !== undefined && c.target !== '' && c.target['@_name'] === 'org.qemu.guest_agent.0');
  const agentTarget = agentChannel?.target;
  return {
    name: domain.name,
    disks,
    agent: agentChannel ? { state: agentTarget !== undefined && agentTarget !== '' ? agentTarget['@_state'] : undefined } : undefined,
  };
}
