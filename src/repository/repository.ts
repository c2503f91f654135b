import { randomBytes } from 'node:crypto';
import type { Backend, ConditionalRemoval, TempSweep } from '../backend/index.js';
import { CHUNK_HEADER_BYTES, decodeChunk, isChunkId, type EncodedChunk } from '../chunk/index.js';
import { chunkEnvelopeProblem, deriveRepositoryKeys, type RepositoryKeys } from '../crypto/index.js';
import { type ManifestHeader, ManifestReader, type FinishedManifest } from '../manifest/index.js';
import { ManifestCache } from './manifest-cache.js';
import { BlockrepError, MAX_BLOCK_SIZE, isBlockrepError, assertDiskId, diskIdFromPathComponent, diskIdToPathComponent, lockHolderSchema, type LockHolder, isVersionId, systemClock, type Clock } from '../shared/index.js';
import { DiskLock } from './disk-lock.js';
import { CONFIG_KEY, NEWEST_FORMAT_VERSION, REPOSITORY_FORMAT, REPOSITORY_FORMAT_VERSION, repositoryConfigSchema, type RepositoryConfig } from './repository-config.js';
import { SealedManifestBackend } from './sealed-manifest-backend.js';

const MANIFEST_SUFFIX = '.manifest';

/**
 * The domain layer over a backend: chunks, versions and their manifests, locks. Layout:
 *
 *   blockrep.json                         repository config (format version)
 *   chunks/<first 2 hex>/<sha256 hex>     chunk blobs (chunk-codec)
 *   disks/<disk id, / as %2F>/<version>.manifest
 *   locks/<disk id>.lock
 *   keys/<16 hex>                          key files (encrypted repositories: repository-key-store.ts)
 *
 * An encrypted repository (config.encryption) is opened locked: listing works, but every read
 * or write of content throws KEY_REQUIRED until unlock() is given its master key. Chunks then
 * travel sealed and manifests are sealed in pages (SealedManifestBackend).
 */
export class Repository {
  private cache: ManifestCache | undefined;
  private keys: RepositoryKeys | undefined;
  private masterKey: Uint8Array | undefined;
  /** Where manifests are read and written: the backend itself, or its sealed view once unlocked. */
  private manifests: Backend;

  private constructor(
    readonly backend: Backend,
    private currentConfig: RepositoryConfig,
    /** What disk locks renew by (tests pass a ManualClock). */
    readonly clock: Clock,
  ) {
    this.manifests = backend;
  }

  /** A repository object for a config not yet stored (init writes its first key file through it). */
  static draft(backend: Backend, config: RepositoryConfig, clock: Clock): Repository {
    return new Repository(backend, config, clock);
  }

  get config(): RepositoryConfig {
    return this.currentConfig;
  }

  // ---- encryption

  get encrypted(): boolean {
    return this.currentConfig.encryption !== undefined;
  }

  get unlocked(): boolean {
    return this.keys !== undefined;
  }

  /** Opens an encrypted repository with its master key (from a key file or an export). */
  unlock(masterKey: Uint8Array): void {
    if (!this.encrypted) throw new BlockrepError('INTERNAL', 'unlock of a repository that is not encrypted');
    this.masterKey = masterKey;
    this.keys = deriveRepositoryKeys(masterKey, this.currentConfig.id);
    this.manifests = new SealedManifestBackend(this.backend, this.keys.sealKey);
  }

  /**
   * The keys chunks are named and sealed with (for the scan workers), or undefined for a plain
   * repository. KEY_REQUIRED for an encrypted one not unlocked: nothing is written without its key.
   */
  chunkKeys(): RepositoryKeys | undefined {
    if (!this.encrypted) return undefined;
    if (this.keys === undefined) throw this.keyRequired();
    return this.keys;
  }

  /** The master key of an unlocked repository (`key add`, `key export`). */
  unlockedMasterKey(): Uint8Array {
    if (this.masterKey === undefined) throw this.keyRequired();
    return this.masterKey;
  }

  private keyRequired(): BlockrepError {
    return new BlockrepError('KEY_REQUIRED', `repository ${this.location} is encrypted: give its passphrase (BLOCKREP_PASSWORD, --password-file FILE, or on a terminal)`);
  }

  /** Re-reads blockrep.json (a server whose empty repository a client turned encrypted). */
  async reloadConfig(): Promise<void> {
    this.currentConfig = (await Repository.open(this.backend, { clock: this.clock })).config;
  }

  get location(): string {
    return this.backend.location;
  }

  /** Opens a repository; with `create`, initialises an empty location first. */
  static async open(backend: Backend, options: { create?: boolean; clock?: Clock } = {}): Promise<Repository> {
    const clock = options.clock ?? systemClock;
    let raw: Buffer | undefined;
    try {
      raw = await backend.read(CONFIG_KEY);
    } catch (err) {
      if (!isBlockrepError(err) || err.code !== 'NOT_FOUND') throw err;
    }
    if (raw === undefined) {
      if (!options.create) {
        throw new BlockrepError('REPO_NOT_FOUND', `no blockrep repository at ${backend.location}: back something up to it first (a backup creates it)`);
      }
      for await (const _ of backend.list('')) {
        throw new BlockrepError('REPO_NOT_FOUND', `${backend.location} is not empty and is not a blockrep repository; choose an empty or new folder`);
      }
      const config: RepositoryConfig = {
        format: REPOSITORY_FORMAT,
        version: REPOSITORY_FORMAT_VERSION,
        id: randomBytes(16).toString('hex'),
        createdAt: new Date(clock.now()).toISOString(),
      };
      try {
        await backend.write(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`), { exclusive: true });
      } catch (err) {
        // Another process created it at the same moment: use theirs.
        if (!isBlockrepError(err) || err.code !== 'EXISTS') throw err;
      }
      return Repository.open(backend, { clock });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new BlockrepError('REPO_CORRUPT', `${backend.location}/${CONFIG_KEY} is not valid JSON`, { cause: err });
    }
    const version = (parsed as { version?: unknown } | null)?.version;
    if ((parsed as { format?: unknown } | null)?.format === REPOSITORY_FORMAT && typeof version === 'number' && (version < REPOSITORY_FORMAT_VERSION || version > NEWEST_FORMAT_VERSION)) {
      throw new BlockrepError(
        'REPO_FORMAT',
        `repository ${backend.location} has format version ${version}, this blockrep reads versions ${REPOSITORY_FORMAT_VERSION} to ${NEWEST_FORMAT_VERSION}: ` +
          (version < REPOSITORY_FORMAT_VERSION ? 'it was made by an older blockrep and cannot be read by this one' : 'upgrade blockrep to read it'),
      );
    }
    const config = repositoryConfigSchema.safeParse(parsed);
    if (!config.success) {
      throw new BlockrepError('REPO_CORRUPT', `${backend.location}/${CONFIG_KEY} is not a blockrep repository config`);
    }
    return new Repository(backend, config.data, clock);
  }

  // ---- chunks

  static chunkKey(id: string): string {
    if (!isChunkId(id)) throw new BlockrepError('INTERNAL', `invalid chunk id ${id}`);
    return `chunks/${id.slice(0, 2)}/${id}`;
  }

  async hasChunk(id: string): Promise<boolean> {
    return (await this.backend.size(Repository.chunkKey(id))) !== undefined;
  }

  /**
   * Which of these chunks the repository holds, in order (batched by the backend). A dedup
   * query: the caller will refer to the chunks found, so by default they are touched (their
   * modification time set to now) and a garbage collection running meanwhile keeps them even
   * if no published version uses them yet (collect-garbage.ts).
   *
   * With `blobBytes` (the size of the blob the caller would store for each id), a chunk stored
   * with another size counts as missing, so the caller stores it anew (Proxmox Backup Server
   * does the same). Chunks are written without an fsync each and synced before a publish
   * (shared/sync-level.ts): a crash before that sync can leave one under its name cut short
   * or empty, and no version may come to refer to it.
   */
  async hasChunks(ids: string[], options: { touch?: boolean; blobBytes?: number[] } = {}): Promise<boolean[]> {
    const sizes = await this.backend.sizes(
      ids.map((id) => Repository.chunkKey(id)),
      { touch: options.touch ?? true },
    );
    const expected = options.blobBytes;
    return sizes.map((size, i) => size !== undefined && (expected === undefined || size === expected[i]));
  }

  /**
   * Stores a chunk (idempotent). Durable once flush() resolves. Returns bytes stored. In an
   * encrypted repository only a sealed chunk is accepted (by its form: a server holds no key).
   */
  async putChunk(chunk: EncodedChunk): Promise<number> {
    if (this.encrypted) {
      const problem = chunkEnvelopeProblem(chunk.blob, MAX_BLOCK_SIZE + CHUNK_HEADER_BYTES);
      if (problem !== undefined) throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunk.id}: ${problem}; an encrypted repository stores sealed chunks only`);
    }
    return this.backend.write(Repository.chunkKey(chunk.id), chunk.blob, { deferSync: true });
  }

  /** Whether a changed block can travel as a patch against its base chunk (chunk-patch.ts). */
  get patchesChunks(): boolean {
    // Patches need the holder to read the base chunk: never in an encrypted repository.
    return !this.encrypted && this.backend.planChunkPatches !== undefined && this.backend.writeChunkPatch !== undefined;
  }

  async planChunkPatches(sliceBytes: number, items: Array<{ baseId: string; hashes: Buffer }>): Promise<Array<Buffer | undefined>> {
    if (!this.backend.planChunkPatches) return items.map(() => undefined);
    return this.backend.planChunkPatches(sliceBytes, items);
  }

  /** Stores chunk `id` from a patch against a base chunk the repository holds. Returns bytes sent. */
  async putChunkPatch(id: string, patch: Uint8Array): Promise<number> {
    if (!this.backend.writeChunkPatch) throw new BlockrepError('INTERNAL', 'this repository takes no chunk patches');
    return this.backend.writeChunkPatch(Repository.chunkKey(id), patch);
  }

  async readChunkBlob(id: string): Promise<Buffer> {
    try {
      return await this.backend.read(Repository.chunkKey(id));
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'NOT_FOUND') throw new BlockrepError('CHUNK_MISSING', `chunk ${id} is missing from ${this.location}`);
      throw err;
    }
  }

  /** The chunk's content, checked against its SHA-256; a chunk over `maxRawBytes` (its block size) is CHUNK_CORRUPT. */
  async getChunk(id: string, maxRawBytes?: number): Promise<Buffer> {
    return this.decodeChunkBlob(await this.readChunkBlob(id), id, maxRawBytes);
  }

  /** A stored blob's content, opened with the repository's key if it is encrypted and checked against its id. */
  decodeChunkBlob(blob: Uint8Array, id: string, maxRawBytes?: number): Buffer {
    return decodeChunk(blob, id, maxRawBytes, this.chunkKeys());
  }

  /** Every stored chunk, with its modification time when the backend lists it. */
  async *listChunks(): AsyncIterable<{ id: string; size: number; mtimeMs?: number }> {
    for await (const obj of this.backend.list('chunks/')) {
      const id = obj.key.slice(obj.key.lastIndexOf('/') + 1);
      if (isChunkId(id)) yield obj.mtimeMs === undefined ? { id, size: obj.size } : { id, size: obj.size, mtimeMs: obj.mtimeMs };
    }
  }

  /** Whether garbage collection can run on this backend (conditional removal). */
  get collectsGarbage(): boolean {
    return this.backend.removeIfOlder !== undefined;
  }

  /**
   * Removes a chunk only if it was last written or touched before `cutoffMs` (garbage
   * collection); race-free against hasChunks' touch.
   */
  async removeChunkIfOlder(id: string, cutoffMs: number): Promise<ConditionalRemoval> {
    if (!this.backend.removeIfOlder) throw new BlockrepError('INTERNAL', `${this.location} cannot remove chunks conditionally`);
    return this.backend.removeIfOlder(Repository.chunkKey(id), cutoffMs);
  }

  /** Temporary files that interrupted writes left, older than `cutoffMs`, removed. */
  async removeStaleTemps(cutoffMs: number): Promise<TempSweep> {
    return this.backend.removeStaleTemps ? this.backend.removeStaleTemps(cutoffMs) : { files: 0, bytes: 0 };
  }

  async flush(): Promise<void> {
    await this.backend.flush();
  }

  // ---- disks and versions

  static manifestKey(diskId: string, versionId: string): string {
    if (!isVersionId(versionId)) throw new BlockrepError('INVALID_VERSION_ID', `invalid version id ${versionId}`);
    return `disks/${diskIdToPathComponent(diskId)}/${versionId}${MANIFEST_SUFFIX}`;
  }

  async listDisks(): Promise<string[]> {
    const disks = new Set<string>();
    for await (const obj of this.backend.list('disks/')) {
      const parts = obj.key.split('/');
      if (parts.length !== 3) continue;
      const id = diskIdFromPathComponent(parts[1]!);
      if (id !== undefined) disks.add(id);
    }
    return [...disks].sort();
  }

  /** Published versions of a disk, oldest first. */
  async listVersions(diskId: string): Promise<string[]> {
    const prefix = `disks/${diskIdToPathComponent(assertDiskId(diskId))}/`;
    const versions: string[] = [];
    for await (const obj of this.backend.list(prefix)) {
      const name = obj.key.slice(prefix.length);
      if (!name.endsWith(MANIFEST_SUFFIX)) continue;
      const id = name.slice(0, -MANIFEST_SUFFIX.length);
      if (isVersionId(id)) versions.push(id);
    }
    return versions.sort();
  }

  async latestVersion(diskId: string): Promise<string | undefined> {
    return (await this.listVersions(diskId)).at(-1);
  }

  /** Resolves "latest" or an id to an existing version, with errors that say what exists. */
  async resolveVersion(diskId: string, version: string | undefined): Promise<string> {
    const versions = await this.listVersions(diskId);
    if (versions.length === 0) {
      throw new BlockrepError('DISK_NOT_FOUND', `disk ${diskId} has no versions in ${this.location} (see \`blockrep list\`)`);
    }
    if (version === undefined || version === 'latest') return versions.at(-1)!;
    if (!versions.includes(version)) {
      throw new BlockrepError('VERSION_NOT_FOUND', `disk ${diskId} has no version ${version} (see \`blockrep list --disk ${diskId}\`)`);
    }
    return version;
  }

  /**
   * A version's manifest, checked against its digest. For a remote repository it is read from
   * (and kept in) the client's manifest cache, so a nightly run does not download it again.
   */
  async openManifest(diskId: string, versionId: string, options: { cache?: boolean } = {}): Promise<ManifestReader> {
    const key = Repository.manifestKey(diskId, versionId);
    // cache: false for a pass over every version (gc), which must not fill the client's cache.
    const cache = options.cache === false ? undefined : this.manifestCache();
    const store = this.manifestStore();
    return cache ? cache.open(store, key) : ManifestReader.open(store, key);
  }

  /** Where manifests are read and written; KEY_REQUIRED for an encrypted repository not unlocked. */
  private manifestStore(): Backend {
    if (this.encrypted && !this.unlocked) throw this.keyRequired();
    return this.manifests;
  }

  private manifestCache(): ManifestCache | undefined {
    if (!this.backend.remote) return undefined;
    this.cache ??= new ManifestCache(ManifestCache.defaultDir(this.config.id));
    return this.cache;
  }

  /** The first bytes of a stored manifest as stored (sealed or not) and its stored size: `verify --without-key`. */
  async sealedManifestHead(diskId: string, versionId: string, bytes: number): Promise<{ head: Buffer; size: number }> {
    const key = Repository.manifestKey(diskId, versionId);
    const size = await this.backend.size(key);
    if (size === undefined) throw new BlockrepError('VERSION_NOT_FOUND', `manifest ${key} does not exist`);
    return { head: await this.backend.read(key, 0, Math.min(bytes, size)), size };
  }

  async versionHeader(diskId: string, versionId: string): Promise<ManifestHeader> {
    return ManifestReader.readHeader(this.manifestStore(), Repository.manifestKey(diskId, versionId));
  }

  /**
   * Publishes a version: every chunk written before is made durable first, then the manifest is
   * stored exclusively (a second writer of the same version id fails). Returns bytes stored.
   */
  async publishVersion(diskId: string, versionId: string, manifest: FinishedManifest): Promise<number> {
    const store = this.manifestStore();
    await this.backend.flush();
    const key = Repository.manifestKey(diskId, versionId);
    // A sealed manifest travels whole: the holder cannot compose it from a delta.
    const deltas = !this.encrypted && this.backend.writeManifestDelta;
    const delta = deltas ? manifest.delta() : undefined;
    const sent =
      delta && delta.length < manifest.bytes && this.backend.writeManifestDelta
        ? await this.backend.writeManifestDelta(key, delta)
        : await store.write(key, manifest.stream(), { exclusive: true });
    // Only once it is the published version: the next run compares against it without a download.
    await this.manifestCache()?.store(key, manifest);
    return sent;
  }

  /**
   * Removes a published version (retention). Its chunks stay until a garbage collection finds
   * no version using them. Callers hold the disk's lock.
   */
  async removeVersion(diskId: string, versionId: string): Promise<void> {
    await this.backend.remove(Repository.manifestKey(diskId, versionId));
  }

  /**
   * The disk locks present, with their holder when readable: garbage collection keeps what
   * every running writer may have touched since it took its lock.
   */
  async listLocks(): Promise<Array<{ key: string; holder: LockHolder | undefined; mtimeMs: number | undefined }>> {
    const out: Array<{ key: string; holder: LockHolder | undefined; mtimeMs: number | undefined }> = [];
    for await (const obj of this.backend.list('locks/')) {
      if (!obj.key.endsWith('.lock')) continue;
      let holder: LockHolder | undefined;
      try {
        const parsed = lockHolderSchema.safeParse(JSON.parse((await this.backend.read(obj.key)).toString('utf8')));
        holder = parsed.success ? parsed.data : undefined;
      } catch (err) {
        if (isBlockrepError(err) && err.code === 'NOT_FOUND') continue; // released meanwhile
        if (!(err instanceof SyntaxError)) throw err;
      }
      out.push({ key: obj.key, holder, mtimeMs: obj.mtimeMs });
    }
    return out;
  }

  /** Requests made so far by kind, for storage that bills per request (S3); undefined elsewhere. */
  requestCounts(): Record<string, number> | undefined {
    return this.backend.requestCounts?.();
  }

  async lockDisk(diskId: string, purpose: string): Promise<DiskLock> {
    return DiskLock.acquire(this.backend, diskId, purpose, { clock: this.clock });
  }
}
