import { homedir } from 'node:os';
import { join } from 'node:path';
import { type Backend, LocalBackend } from '../backend/index.js';
import { ManifestReader, type FinishedManifest } from '../manifest/index.js';
import { isBlockrepError } from '../shared/index.js';

const DOWNLOAD_PIECE = 4 * 1024 * 1024;
/**
 * Older copies of a disk's manifest are removed once unused this long: another blockrep process
 * on this host (a restore, a verify, a gc) may be reading one while this one stores the next.
 */
const SIBLING_IDLE_MS = 60 * 60_000;

/**
 * The client's copy of the last manifest it published (or fetched) for each disk of a remote
 * repository, so a nightly run compares against it without downloading it again. Keyed by
 * repository id and version id, and checked against its digest like any manifest; a damaged
 * or missing copy is fetched again.
 */
export class ManifestCache {
  private readonly local: LocalBackend;

  constructor(readonly dir: string) {
    this.local = new LocalBackend(dir);
  }

  static defaultDir(repositoryId: string): string {
    const base = process.env.BLOCKREP_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'blockrep');
    return join(base, 'manifests', repositoryId);
  }

  /** The manifest at `key`, from the cache when it holds it intact, else downloaded into it. */
  async open(remote: Backend, key: string): Promise<ManifestReader> {
    try {
      // Marked as in use first, so another process does not remove it while it is read.
      await this.local.sizes([key], { touch: true });
      return await ManifestReader.open(this.local, key);
    } catch (err) {
      if (!isBlockrepError(err)) throw err;
    }
    const size = await remote.size(key);
    await this.local.write(key, download(remote, key, size ?? 0));
    await this.pruneSiblings(key);
    return ManifestReader.open(this.local, key);
  }

  /** Keeps a manifest this client just published, replacing the older copies of its disk. */
  async store(key: string, manifest: FinishedManifest): Promise<void> {
    await this.local.write(key, manifest.stream());
    await this.pruneSiblings(key);
  }

  private async pruneSiblings(key: string): Promise<void> {
    const folder = key.slice(0, key.lastIndexOf('/') + 1);
    for await (const obj of this.local.list(folder)) {
      const idle = obj.mtimeMs === undefined || obj.mtimeMs < Date.now() - SIBLING_IDLE_MS;
      if (obj.key !== key && obj.key.slice(folder.length).indexOf('/') === -1 && idle) await this.local.remove(obj.key);
    }
  }
}

async function* download(remote: Backend, key: string, size: number): AsyncIterable<Uint8Array> {
  for (let pos = 0; pos < size; pos += DOWNLOAD_PIECE) {
    yield await remote.read(key, pos, Math.min(DOWNLOAD_PIECE, size - pos));
  }
}
