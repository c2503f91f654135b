import { createHash, randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { LibvirtDomain } from './libvirt-domain.js';
import { xmlReader } from './libvirt-xml.js';

/**
 * libvirt checkpoints as blockrep uses them for changed-block tracking: names that say they are
 * blockrep's and for which repository (`blockrep-<repository tag>-<time>-<random>`), the chain a
 * disk's versions follow (repository, disk, domain uuid), listing and reading checkpoints
 * (`checkpoint-list --name`, `checkpoint-dumpxml --no-domain`, checked by zod), deleting them.
 * Checkpoints of other tools are never deleted: only names with this repository's prefix are.
 */

/** The part of a checkpoint name that ties it to one repository. */
export function checkpointPrefix(repositoryId: string): string {
  return `blockrep-${createHash('sha256').update(`repository\0${repositoryId}`).digest('hex').slice(0, 12)}-`;
}

/** A new, unique checkpoint name of this repository; names sort by creation time. */
export function newCheckpointName(repositoryId: string, now = new Date()): string {
  const time = now.toISOString().replace(/[-:]/g, '').replace('.', '');
  return `${checkpointPrefix(repositoryId)}${time}-${randomBytes(3).toString('hex')}`;
}

/** Is `name` a checkpoint blockrep made (for any repository)? */
export function isBlockrepCheckpoint(name: string): boolean {
  return /^blockrep-[0-9a-f]{12}-\d{8}T\d{9}Z-[0-9a-f]{6}$/.test(name);
}

/**
 * The chain of a disk's tracked versions: a domain redefined or migrated gets a new uuid, and
 * with it a new chain, so a checkpoint of the old domain is never trusted.
 */
export function checkpointChain(repositoryId: string, diskId: string, domainUuid: string): string {
  return createHash('sha256').update(`libvirt-checkpoint\0${repositoryId}\0${diskId}\0${domainUuid.toLowerCase()}`).digest('hex').slice(0, 32);
}

export interface CheckpointInfo {
  name: string;
  /** The disks whose writes it tracks (checkpoint='bitmap'). */
  bitmapDisks: string[];
}

const checkpointSchema = z.object({
  domaincheckpoint: z.object({
    name: z.string().min(1),
    disks: z
      .union([
        z.object({
          disk: z.array(z.object({ '@_name': z.string().min(1), '@_checkpoint': z.string().optional() })).default([]),
        }),
        z.literal(''),
      ])
      .optional(),
  }),
});

const readCheckpointXml = xmlReader(checkpointSchema, ['domaincheckpoint.disks.disk']);

export function parseCheckpointXml(xml: string, what = 'a checkpoint definition'): CheckpointInfo {
  const c = readCheckpointXml(xml, what).domaincheckpoint;
  const disks = c.disks === undefined || c.disks === '' ? [] : c.disks.disk;
  return { name: c.name, bitmapDisks: disks.filter((d) => (d['@_checkpoint'] ?? 'bitmap') === 'bitmap').map((d) => d['@_name']) };
}

/** The names of every checkpoint of the domain (all tools'). */
export async function listCheckpoints(domain: LibvirtDomain): Promise<string[]> {
  const out = await domain.virsh.run(['checkpoint-list', '--domain', domain.name, '--name'], { domain: domain.name, timeoutMs: 30_000 });
  return out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}

export async function readCheckpoint(domain: LibvirtDomain, name: string): Promise<CheckpointInfo> {
  const xml = await domain.virsh.run(['checkpoint-dumpxml', '--domain', domain.name, '--checkpointname', name, '--no-domain'], { domain: domain.name, timeoutMs: 30_000 });
  return parseCheckpointXml(xml, `checkpoint ${name} of domain ${domain.name}`);
}

/** Deletes one checkpoint; libvirt merges its bitmaps into its parent's, so no write is lost to the others. */
export async function deleteCheckpoint(domain: LibvirtDomain, name: string): Promise<void> {
  await domain.virsh.run(['checkpoint-delete', '--domain', domain.name, '--checkpointname', name], { domain: domain.name, timeoutMs: 120_000 });
}

/** The checkpoint to create with a backup job: a bitmap on each trackable disk, none elsewhere. */
export function checkpointXml(name: string, disks: Array<{ target: string; bitmap: boolean }>): string {
  const lines = disks.map((d) => `    <disk name='${xmlAttr(d.target)}' checkpoint='${d.bitmap ? 'bitmap' : 'no'}'/>`);
  return `<domaincheckpoint>\n  <name>${xmlText(name)}</name>\n  <description>made by blockrep for changed-block tracking; deleted by blockrep when the next backup of the repository is published</description>\n  <disks>\n${lines.join('\n')}\n  </disks>\n</domaincheckpoint>\n`;
}

export function xmlAttr(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll("'", '&apos;').replaceAll('"', '&quot;');
}

export function xmlText(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}
