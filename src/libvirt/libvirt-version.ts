import { BlockrepError } from '../shared/index.js';
import type { Virsh } from './virsh.js';

/**
 * The version of libvirt that serves the connection (`virsh version`: the daemon's, else the
 * library's), as [major, minor, micro]. The backup API with per-disk incremental backups
 * (`backupmode`, `incremental` on a disk) needs 7.6.
 */

export const BACKUP_API_MIN_VERSION: readonly [number, number, number] = [7, 6, 0];

export function parseVirshVersion(out: string): [number, number, number] {
  const pick = (label: RegExp): [number, number, number] | undefined => {
    const m = label.exec(out);
    return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
  };
  const v = pick(/^Running against daemon:\s*(\d+)\.(\d+)(?:\.(\d+))?/m) ?? pick(/^Using library:\s*libvirt\s+(\d+)\.(\d+)(?:\.(\d+))?/m);
  if (!v) throw new BlockrepError('LIBVIRT_ERROR', `virsh version gave an answer blockrep does not understand: ${JSON.stringify(out.trim().slice(0, 300))}`);
  return v;
}

export async function libvirtVersion(virsh: Virsh): Promise<[number, number, number]> {
  return parseVirshVersion(await virsh.run(['version'], { timeoutMs: 60_000 }));
}

export function versionAtLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < 3; i++) if ((v[i] ?? 0) !== (min[i] ?? 0)) return (v[i] ?? 0) > (min[i] ?? 0);
  return true;
}
