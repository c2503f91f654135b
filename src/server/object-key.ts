import { isChunkId } from '../chunk/index.js';
import { Repository, CONFIG_KEY, KEYS_PREFIX, keyFileKey } from '../repository/index.js';
import { BlockrepError, diskIdFromPathComponent, diskIdToPathComponent, isVersionId } from '../shared/index.js';

/**
 * What a request may name: only the keys the repository layer itself makes. Each is parsed
 * and then rebuilt with the repository's own key functions; a key that does not come back
 * byte-identical (another spelling, an escape, a `..`) is refused before any storage is touched.
 */
export type ObjectRef =
  | { kind: 'config'; key: string }
  | { kind: 'chunk'; key: string; chunkId: string }
  | { kind: 'manifest'; key: string; diskId: string; versionId: string }
  | { kind: 'lock'; key: string; diskId: string }
  /** A key file of an encrypted repository (the master key wrapped under a passphrase). */
  | { kind: 'key'; key: string; keyId: string };

export type ObjectKind = ObjectRef['kind'];

const CHUNK = /^chunks\/([0-9a-f]{2})\/([0-9a-f]{64})$/;
const MANIFEST = /^disks\/([^/]+)\/([^/]+)\.manifest$/;
const LOCK = /^locks\/([^/]+)\.lock$/;
const KEY_FILE = /^keys\/([0-9a-f]{16})$/;

export function parseObjectKey(key: string): ObjectRef {
  if (key === CONFIG_KEY) return { kind: 'config', key };
  const chunk = CHUNK.exec(key);
  if (chunk && isChunkId(chunk[2]!) && Repository.chunkKey(chunk[2]!) === key) return { kind: 'chunk', key, chunkId: chunk[2]! };
  const manifest = MANIFEST.exec(key);
  if (manifest) {
    const diskId = diskIdOf(manifest[1]!);
    const versionId = manifest[2]!;
    if (diskId !== undefined && isVersionId(versionId) && Repository.manifestKey(diskId, versionId) === key) return { kind: 'manifest', key, diskId, versionId };
  }
  const lock = LOCK.exec(key);
  if (lock) {
    const diskId = diskIdOf(lock[1]!);
    if (diskId !== undefined) return { kind: 'lock', key, diskId };
  }
  const keyFile = KEY_FILE.exec(key);
  if (keyFile && keyFileKey(keyFile[1]!) === key) return { kind: 'key', key, keyId: keyFile[1]! };
  throw new BlockrepError('BAD_REQUEST', `${JSON.stringify(key.slice(0, 300))} is not a key of a blockrep repository`);
}

/** A disk's path component, only in its one canonical spelling. */
function diskIdOf(component: string): string | undefined {
  const id = diskIdFromPathComponent(component);
  return id !== undefined && diskIdToPathComponent(id) === component ? id : undefined;
}

/** The folders a listing may name. */
export type ListScope =
  | { kind: 'root' }
  | { kind: 'chunks' }
  | { kind: 'disks' }
  | { kind: 'disk'; diskId: string }
  | { kind: 'locks' }
  | { kind: 'keys' };

export function parseListPrefix(prefix: string): ListScope {
  if (prefix === '') return { kind: 'root' };
  if (prefix === 'chunks/' || /^chunks\/[0-9a-f]{2}\/$/.test(prefix)) return { kind: 'chunks' };
  if (prefix === 'disks/') return { kind: 'disks' };
  if (prefix === 'locks/') return { kind: 'locks' };
  if (prefix === KEYS_PREFIX) return { kind: 'keys' };
  const disk = /^disks\/([^/]+)\/$/.exec(prefix);
  if (disk) {
    const diskId = diskIdOf(disk[1]!);
    if (diskId !== undefined) return { kind: 'disk', diskId };
  }
  throw new BlockrepError('BAD_REQUEST', `${JSON.stringify(prefix.slice(0, 300))} is not a prefix a blockrep repository lists`);
}

/** The disk a listed key belongs to (disks/<d>/… or locks/<d>.lock), for filtering listings. */
export function diskOfListedKey(key: string): string | undefined {
  const disk = /^disks\/([^/]+)\//.exec(key) ?? LOCK.exec(key);
  return disk ? diskIdOf(disk[1]!) : undefined;
}

/**
 * The key named by the path after /v1/objects/: each segment percent-decoded exactly once; a
 * segment that is empty, malformed, or decodes to something holding `/`, `\` or NUL is refused.
 */
export function keyFromPath(rawPath: string): string {
  const segments = rawPath.split('/');
  const decoded: string[] = [];
  for (const segment of segments) {
    let s: string;
    try {
      s = decodeURIComponent(segment);
    } catch {
      throw new BlockrepError('BAD_REQUEST', 'malformed percent-encoding in the object path');
    }
    if (s === '' || /[/\\\0]/.test(s)) throw new BlockrepError('BAD_REQUEST', 'the object path has an empty or invalid segment');
    decoded.push(s);
  }
  return decoded.join('/');
}
