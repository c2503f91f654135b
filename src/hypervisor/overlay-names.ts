import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * How blockrep names what it creates in a VM, so that a leftover is always recognisable:
 * the overlay of a base image is the file `<base file>.blockrep-overlay.qcow2` next to it, its
 * node is `blockrep-ovl-<hash of the base node>`, and the job that commits it back is
 * `blockrep-commit-<overlay node>`.
 */

export const OVERLAY_FILE_SUFFIX = '.blockrep-overlay.qcow2';
export const OVERLAY_NODE_PREFIX = 'blockrep-ovl-';
export const COMMIT_JOB_PREFIX = 'blockrep-commit-';

export function overlayFileFor(baseFile: string): string {
  return `${baseFile}${OVERLAY_FILE_SUFFIX}`;
}

export function isOverlayFile(file: string): boolean {
  return file.endsWith(OVERLAY_FILE_SUFFIX);
}

/** A node name QEMU accepts (a letter first, at most 31 characters), stable for a base node. */
export function overlayNodeFor(baseNode: string): string {
  return `${OVERLAY_NODE_PREFIX}${createHash('sha256').update(baseNode).digest('hex').slice(0, 12)}`;
}

export function isOverlayNode(node: string): boolean {
  return node.startsWith(OVERLAY_NODE_PREFIX);
}

export function commitJobFor(overlayNode: string): string {
  return `${COMMIT_JOB_PREFIX}${overlayNode}`;
}

export function isCommitJob(jobId: string): boolean {
  return jobId.startsWith(COMMIT_JOB_PREFIX);
}

/**
 * The unix socket blockrep asks QEMU's NBD server to listen on for one VM: next to its QMP
 * socket (a folder QEMU can write), or in the temporary folder when that path would be too long
 * for a unix socket. `recover` stops a server listening there: blockrep started it.
 */
export function nbdSocketFor(qmpSocket: string): string {
  const beside = `${qmpSocket}.blockrep-nbd`;
  if (Buffer.byteLength(beside) <= 100) return beside;
  return join(tmpdir(), `blockrep-nbd-${createHash('sha256').update(qmpSocket).digest('hex').slice(0, 16)}.sock`);
}
