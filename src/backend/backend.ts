import { createHash } from 'node:crypto';

/** The tag of an object's content for replaceIfMatch (and HTTP If-Match): its SHA-256, hex. */
export function contentTag(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Storage of named byte objects: all the repository needs from a place that keeps its data
 * (a local directory, a `blockrep serve` over HTTP). Keys are `/`-separated relative
 * names made by the repository layer (`chunks/ab/ab12…`, `disks/vm%2Fvda/….manifest`); a
 * backend never interprets them beyond that.
 */
export interface BackendObject {
  key: string;
  size: number;
  /**
   * Last modification, ms since the epoch by the storage's clock (local and HTTP listings give
   * it): garbage collection keeps chunks written or touched after its cutoff.
   */
  mtimeMs?: number | undefined;
}

export interface SizesOptions {
  /**
   * Also refresh the modification time of every object found: a dedup hit that a new version
   * will refer to, so a concurrent garbage collection keeps it (collect-garbage.ts).
   */
  touch?: boolean;
}

/** What removeIfOlder did. */
export type ConditionalRemoval = 'removed' | 'young' | 'missing';

export interface TempSweep {
  files: number;
  bytes: number;
}

export interface WriteOptions {
  /** The write must not replace an existing object: if the key exists, throw code 'EXISTS'. */
  exclusive?: boolean;
  /**
   * The caller calls flush() before relying on durability (a batch of chunk writes before a
   * manifest is published), so the backend may defer syncing until then: a local folder's
   * directory syncs, and at sync level `filesystem` the file's own fsync (one syncfs at the
   * flush covers them all). The object is atomic either way: whole under its name, or absent.
   */
  deferSync?: boolean;
}

export interface Backend {
  /** Where the data is, for messages (never contains secrets). */
  readonly location: string;
  /** Reached over a network: worth caching what was read (manifests) on this side. */
  readonly remote?: boolean;
  /** Size of the object, or undefined when it does not exist. */
  size(key: string): Promise<number | undefined>;
  /**
   * Sizes of many objects at once, in the order of `keys` (undefined: missing): "which of these
   * chunks do you already have" in one round trip per batch instead of one per chunk.
   */
  sizes(keys: string[], options?: SizesOptions): Promise<Array<number | undefined>>;
  /** The whole object, or `length` bytes from `offset`. A missing object throws code 'NOT_FOUND'. */
  read(key: string, offset?: number, length?: number): Promise<Buffer>;
  /**
   * Stores an object atomically and durably (with deferSync: durably once flush() resolves):
   * readers see the old object or none until it is complete, never a partial one. Returns the
   * number of bytes stored. Keeps no reference to `data` once it resolves: the chunk uploader
   * frees a chunk's blob then (releaseBuffer).
   */
  write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: WriteOptions): Promise<number>;
  /**
   * Optional: stores a manifest given as a delta against its parent (manifest-delta.ts), which
   * the receiver composes and checks. Backends that lack it get the whole manifest instead.
   * Returns the bytes sent.
   */
  writeManifestDelta?: ((key: string, delta: Uint8Array) => Promise<number>) | undefined;
  /**
   * Optional, for backends behind a slow link (chunk-patch.ts): for each new block, which
   * slices differ from the base chunk the far side holds (undefined: it cannot tell).
   */
  planChunkPatches?: ((sliceBytes: number, items: Array<{ baseId: string; hashes: Buffer }>) => Promise<Array<Buffer | undefined>>) | undefined;
  /** Optional: stores chunk `chunkId` given as a patch against a base chunk. Returns bytes sent. */
  writeChunkPatch?: ((chunkKey: string, patch: Uint8Array) => Promise<number>) | undefined;
  /**
   * Optional: how many ms ago the object was last written, by the storage's own clock (its
   * modification time against its "now"), or undefined when it does not exist. Lock leases
   * (disk-lock.ts) are judged by it, so the clocks of the hosts that write locks do not matter.
   */
  objectAgeMs?: ((key: string) => Promise<number | undefined>) | undefined;
  /**
   * Optional: replaces the object with `data` (removes it when `data` is null) only if its
   * content's tag (contentTag) is `tag`; false, changing nothing, when it differs or is missing.
   * Atomic against every other conditional replacement and exclusive write made through the same
   * process — a server's, for all its clients. Disk locks (disk-lock.ts) are renewed, taken over
   * and released with it, so a late renewal never overwrites a successor's lock.
   */
  replaceIfMatch?: ((key: string, tag: string, data: Uint8Array | null) => Promise<boolean>) | undefined;
  /** Makes every earlier deferred write durable. */
  flush(): Promise<void>;
  /** Objects whose key starts with `prefix` (a folder-like prefix ending in `/`). */
  list(prefix: string): AsyncIterable<BackendObject>;
  /**
   * Optional: the names of the folders directly under `prefix` (ending in `/`), sorted, without
   * listing what is in them — so a server lists only the disks a token may see.
   */
  folders?: ((prefix: string) => Promise<string[]>) | undefined;
  /** Removes an object; a missing object is not an error. */
  remove(key: string): Promise<void>;
  /**
   * Optional (garbage collection): removes the object only if its modification time is before
   * `cutoffMs`, atomically with respect to `sizes(…, { touch: true })` — an object touched at
   * any moment before the removal is kept.
   */
  removeIfOlder?: ((key: string, cutoffMs: number) => Promise<ConditionalRemoval>) | undefined;
  /**
   * Optional (garbage collection): removes temporary files that writes cut short (kill -9)
   * left in the repository's folders, if last modified before `cutoffMs`.
   */
  removeStaleTemps?: ((cutoffMs: number) => Promise<TempSweep>) | undefined;
  /**
   * Optional: the requests made so far, by kind (PUT, GET, HEAD, LIST, COPY, DELETE), for
   * storage that bills per request (S3); attempts that were retried count each.
   */
  requestCounts?: (() => Record<string, number>) | undefined;
  close(): Promise<void>;
}
