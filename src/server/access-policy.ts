import { BlockrepError } from '../shared/index.js';
import type { ListScope, ObjectRef } from './object-key.js';
import { ALL_DISKS, type Right } from '../tokens/index.js';

/** Who is asking: a token's name (never its secret), its disk prefixes and its rights. */
export interface Principal {
  name: string;
  disks: readonly string[];
  rights: ReadonlySet<Right>;
}

/** A server started without --tokens (loopback, or --insecure-no-auth): everything allowed. */
export const UNRESTRICTED: Principal = { name: '-', disks: [ALL_DISKS], rights: new Set<Right>(['read', 'write', 'admin']) };

export type Method = 'HEAD' | 'GET' | 'PUT' | 'DELETE';

/** "vm1" covers "vm1" and "vm1/vda" but not "vm10"; "*" covers every disk. */
export function prefixCoversDisk(prefix: string, diskId: string): boolean {
  return prefix === ALL_DISKS || diskId === prefix || diskId.startsWith(`${prefix}/`);
}

export function mayOnDisk(p: Principal, right: Right, diskId: string): boolean {
  return p.rights.has(right) && p.disks.some((prefix) => prefixCoversDisk(prefix, diskId));
}

/** Chunks are shared by every disk: reading or adding one needs the right on some disk. */
function mayOnAnyDisk(p: Principal, right: Right): boolean {
  return p.rights.has(right) && p.disks.length > 0;
}

/** Deleting chunks and listing them concern every disk at once: admin over all disks ("*"). */
function mayOnAllDisks(p: Principal, right: Right): boolean {
  return p.rights.has(right) && p.disks.includes(ALL_DISKS);
}

const VERB: Record<Method, string> = { HEAD: 'read', GET: 'read', PUT: 'write', DELETE: 'delete' };

/**
 * Throws FORBIDDEN (or METHOD_NOT_ALLOWED) unless `p` may do `method` on `ref`. It decides from
 * the key alone, before any storage is touched, so a disk the token cannot see gets the same
 * answer whether or not it exists.
 */
export function authorizeObject(p: Principal, method: Method, ref: ObjectRef): void {
  const deny = (what: string): never => {
    throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not ${VERB[method]} ${what}`);
  };
  switch (ref.kind) {
    case 'config':
      // Written only to turn an empty repository encrypted (blockrep init --encrypt; config-upload.ts).
      if (method === 'DELETE') throw new BlockrepError('METHOD_NOT_ALLOWED', 'blockrep.json cannot be removed over the network');
      if (method === 'PUT' && !mayOnAllDisks(p, 'admin')) deny('blockrep.json (needs admin on "*")');
      return;
    case 'key':
      // Every client of an encrypted repository unlocks it (a backup seals with its key): any
      // token reads key files; adding or removing a passphrase concerns every disk.
      if ((method === 'PUT' || method === 'DELETE') && !mayOnAllDisks(p, 'admin')) deny('key files (needs admin on "*")');
      return;
    case 'chunk':
      if (method === 'DELETE') {
        if (!mayOnAllDisks(p, 'admin')) deny('chunks (needs admin on "*")');
      } else if (!mayOnAnyDisk(p, method === 'PUT' ? 'write' : 'read')) {
        deny('chunks');
      }
      return;
    case 'manifest': {
      const right: Right = method === 'DELETE' ? 'admin' : method === 'PUT' ? 'write' : 'read';
      if (!mayOnDisk(p, right, ref.diskId)) deny(`versions of disk ${ref.diskId}`);
      return;
    }
    case 'lock':
      if (!mayOnDisk(p, method === 'HEAD' || method === 'GET' ? 'read' : 'write', ref.diskId)) deny(`the lock of disk ${ref.diskId}`);
      return;
  }
}

/** Listing: every disk folder needs read on it; the whole tree or chunks/ needs admin on "*". */
export function authorizeList(p: Principal, scope: ListScope): void {
  switch (scope.kind) {
    case 'root':
    case 'chunks':
      if (!mayOnAllDisks(p, 'admin')) throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not list ${scope.kind === 'root' ? 'the whole repository' : 'chunks'} (needs admin on "*")`);
      return;
    case 'disk':
      if (!mayOnDisk(p, 'read', scope.diskId)) throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not read disk ${scope.diskId}`);
      return;
    case 'disks':
    case 'locks':
      return; // filtered entry by entry (listedKeyVisible)
    case 'keys':
      return; // any token: key files are what every client unlocks with
  }
}

/** In a listing of disks/ or locks/: only the disks the token may read. */
export function listedKeyVisible(p: Principal, diskId: string | undefined): boolean {
  if (diskId === undefined) return p.rights.has('read') && p.disks.includes(ALL_DISKS);
  return mayOnDisk(p, 'read', diskId);
}

/**
 * Garbage collection (conditional chunk removal, temp sweep) decides from what it can see: a
 * token that could not read every disk would miss versions and remove the chunks they use. So
 * it needs read and admin on "*".
 */
export function authorizeCollectGarbage(p: Principal): void {
  if (!mayOnAllDisks(p, 'admin') || !mayOnAllDisks(p, 'read')) {
    throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not collect garbage (needs read and admin on "*")`);
  }
}

export function authorizeFlush(p: Principal): void {
  if (!mayOnAnyDisk(p, 'write')) throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not write`);
}

/**
 * Patch plans and patches tell whether a chunk is stored and whether pieces of it match a
 * guess: reading, besides writing. A write-only token sends whole chunks.
 */
export function authorizePatching(p: Principal): void {
  if (!mayOnAnyDisk(p, 'write') || !mayOnAnyDisk(p, 'read')) throw new BlockrepError('FORBIDDEN', `token ${JSON.stringify(p.name)} may not send chunk patches (needs read and write)`);
}

/** Writing or removing a lock without naming it (If-Match) breaks whatever lease is there: admins only. */
export function mayBreakLock(p: Principal, diskId: string): boolean {
  return mayOnDisk(p, 'admin', diskId);
}
