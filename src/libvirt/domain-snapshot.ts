import { stat, unlink } from 'node:fs/promises';
import { isOverlayFile, overlayFileFor } from '../hypervisor/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import type { BackingLayer, DomainDefinition, DomainDisk } from './domain-xml.js';
import type { LibvirtDomain } from './libvirt-domain.js';

/**
 * The snapshot method through libvirt: one atomic, disk-only, external snapshot of the chosen
 * disks without libvirt metadata (quiesced inside the call when asked: libvirt freezes and thaws
 * itself), then per disk an active, shallow commit with pivot, checked against the live and the
 * persistent definition before the overlay file is deleted. Overlays are named as in the QMP
 * path (`<base file>.blockrep-overlay.qcow2`), so a leftover is always recognisable.
 */

export interface DomainOverlayTarget {
  /** The disk's target (vda): what virsh calls it. */
  target: string;
  /** The frozen image: the disk's source before the snapshot. */
  baseFile: string;
  baseFormat: 'raw' | 'qcow2';
  overlayFile: string;
  /** The live backing chain below the base before the snapshot, which must be there again after. */
  chain: BackingLayer[];
  /** The persistent definition's source and format of the disk before the snapshot (undefined: not in it). */
  persistent: { source: string | undefined; format: string | undefined } | undefined;
}

/** The disks a snapshot can cover, and why the others are left out. */
export function snapshotCandidates(live: DomainDefinition): { disks: DomainDisk[]; skipped: Array<{ id: string; reason: string }> } {
  const disks: DomainDisk[] = [];
  const skipped: Array<{ id: string; reason: string }> = [];
  for (const d of live.disks) {
    if (d.device !== 'disk') continue; // cdrom, floppy, lun: not the VM's data
    if (d.readonly) skipped.push({ id: d.target, reason: 'read-only' });
    else if (d.type !== 'file') skipped.push({ id: d.target, reason: `a ${d.type} disk (the snapshot method makes its overlay as a file next to the disk's image file)` });
    else if (d.source === undefined) skipped.push({ id: d.target, reason: 'no source' });
    else if (d.format !== 'raw' && d.format !== 'qcow2') skipped.push({ id: d.target, reason: `format ${d.format ?? 'unknown'} (blockrep reads raw and qcow2)` });
    else disks.push(d);
  }
  return { disks, skipped };
}

export function planDomainOverlays(disks: DomainDisk[], persistent: DomainDefinition): DomainOverlayTarget[] {
  return disks.map((d) => {
    const p = persistent.disks.find((x) => x.target === d.target);
    return {
      target: d.target,
      baseFile: d.source!,
      baseFormat: d.format as 'raw' | 'qcow2',
      overlayFile: overlayFileFor(d.source!),
      chain: d.chain,
      persistent: p ? { source: p.source, format: p.format } : undefined,
    };
  });
}

/** virsh --diskspec separates its fields with commas; a comma in a path is written twice. */
function diskspecPath(path: string): string {
  return path.replaceAll(',', ',,');
}

export interface DomainSnapshot {
  targets: DomainOverlayTarget[];
  /** When the snapshot call returned: every disk ran on its overlay from then on. */
  snapshotAt: number;
  /** The whole snapshot-create-as call; with --quiesce the guest was frozen within it. */
  snapshotMs: number;
  quiesced: boolean;
}

/**
 * Takes the snapshot. Disks not in `targets` get `snapshot=no` (otherwise libvirt would
 * snapshot them too, under names of its own). On failure, no overlay of ours stays behind.
 */
export async function takeDomainSnapshot(domain: LibvirtDomain, all: DomainDisk[], targets: DomainOverlayTarget[], quiesce: boolean): Promise<DomainSnapshot> {
  const specs: string[] = [];
  for (const d of all) {
    const t = targets.find((x) => x.target === d.target);
    specs.push('--diskspec', t ? `${d.target},snapshot=external,file=${diskspecPath(t.overlayFile)}` : `${d.target},snapshot=no`);
  }
  const args = ['snapshot-create-as', '--domain', domain.name, '--disk-only', '--atomic', '--no-metadata', ...(quiesce ? ['--quiesce'] : []), ...specs];
  const started = Date.now();
  try {
    await domain.virsh.run(args, { domain: domain.name, timeoutMs: 120_000 });
  } catch (err) {
    const removed = await removeUnusedOverlays(domain, targets.map((t) => t.overlayFile)).catch(() => [] as string[]);
    const e = isBlockrepError(err) ? err : new BlockrepError('SNAPSHOT_FAILED', String(err), { cause: err });
    const details = { ...(e.details ?? {}), removed };
    if (e.code === 'LIBVIRT_ERROR') {
      const frozen = /fsfreeze|freeze/i.test(String(e.details?.libvirt ?? e.message));
      throw new BlockrepError(
        frozen ? 'FREEZE_FAILED' : 'SNAPSHOT_FAILED',
        `${frozen ? "the guest's filesystems could not be frozen" : 'the snapshot failed'} (${String(e.details?.libvirt ?? e.message)}); libvirt thawed the guest and the domain runs on its own images, unharmed`,
        { cause: e, details },
      );
    }
    throw new BlockrepError(e.code, e.message, { cause: e, details });
  }
  const snapshotAt = Date.now();
  return { targets, snapshotAt, snapshotMs: snapshotAt - started, quiesced: quiesce };
}

/**
 * Commits one disk's overlay back into its base and pivots (`blockcommit --active --shallow
 * --pivot --wait`: never without --shallow, or the commit would go to the bottom of a backing
 * chain), checks that the live and persistent definitions are on the original image and chain
 * again, and only then deletes the overlay. Returns when the disk ran on its base again.
 */
export async function commitDomainDisk(domain: LibvirtDomain, t: DomainOverlayTarget, recoveryStep: string, timeoutMs = 3_600_000): Promise<{ pivotedAt: number }> {
  const fail = (why: string, cause?: unknown): BlockrepError =>
    new BlockrepError('COMMIT_FAILED', `disk ${t.target} of domain ${domain.name}: ${why}; it may still run on ${t.overlayFile}, which was kept. Run: ${recoveryStep}`, {
      ...(cause !== undefined ? { cause } : {}),
      details: { disk: t.target, overlay: t.overlayFile, recovery: recoveryStep },
    });
  try {
    // virsh's --timeout aborts the job, which leaves the disk on its overlay: safe, and recover finishes it.
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    await domain.virsh.run(['blockcommit', '--domain', domain.name, '--path', t.target, '--active', '--shallow', '--pivot', '--wait', '--timeout', String(seconds)], {
      domain: domain.name,
      timeoutMs: timeoutMs + 60_000,
    });
  } catch (err) {
    throw fail(`the commit failed (${err instanceof Error ? err.message : String(err)})`, err);
  }
  const pivotedAt = Date.now();
  const problem = await restoredProblem(domain, t);
  if (problem !== undefined) throw fail(problem);
  try {
    await unlink(t.overlayFile);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fail(`the overlay could not be deleted (${String(err)})`, err);
  }
  return { pivotedAt };
}

/** What differs from the disk's state before the snapshot, in the live and persistent definitions; undefined when nothing does. */
export async function restoredProblem(domain: LibvirtDomain, t: DomainOverlayTarget): Promise<string | undefined> {
  const live = (await domain.definition()).disks.find((d) => d.target === t.target);
  if (!live) return 'the disk is gone from the live definition';
  if (live.source !== t.baseFile || live.format !== t.baseFormat) return `the live definition has it on ${live.source ?? '(none)'} (${live.format ?? '?'}), not ${t.baseFile} (${t.baseFormat})`;
  if (live.mirror) return `a block job (${live.mirror.job ?? '?'}) still runs on it`;
  const chain = (c: BackingLayer[]): string => c.map((l) => `${l.source ?? '?'}:${l.format ?? '?'}`).join(' > ');
  if (chain(live.chain) !== chain(t.chain)) return `its backing chain is ${chain(live.chain) || '(none)'}, not ${chain(t.chain) || '(none)'} as before`;
  if (t.persistent) {
    const p = (await domain.definition(true)).disks.find((d) => d.target === t.target);
    if (!p || p.source !== t.persistent.source || p.format !== t.persistent.format) {
      return `the persistent definition has it on ${p?.source ?? '(none)'} (${p?.format ?? '?'}), not ${t.persistent.source ?? '(none)'} as before`;
    }
  }
  return undefined;
}

/** Every file a definition refers to (active layers, backing chains, mirrors). */
export function filesInUse(defs: DomainDefinition[]): Set<string> {
  const used = new Set<string>();
  for (const def of defs) {
    for (const d of def.disks) {
      if (d.source !== undefined) used.add(d.source);
      for (const l of d.chain) if (l.source !== undefined) used.add(l.source);
      if (d.mirror?.source !== undefined) used.add(d.mirror.source);
    }
  }
  return used;
}

/** Deletes those of `files` (blockrep overlays) that exist and that neither definition uses. */
export async function removeUnusedOverlays(domain: LibvirtDomain, files: string[]): Promise<string[]> {
  const used = filesInUse([await domain.definition(), await domain.definition(true)]);
  const removed: string[] = [];
  for (const f of new Set(files)) {
    if (!isOverlayFile(f) || used.has(f)) continue;
    try {
      await stat(f);
    } catch {
      continue;
    }
    await unlink(f);
    removed.push(f);
  }
  return removed;
}
