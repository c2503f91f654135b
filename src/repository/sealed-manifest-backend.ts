import type { Backend } from '../backend/index.js';
import { MANIFEST_ENVELOPE_HEADER_BYTES, MANIFEST_PAGE_BYTES, SEAL_OVERHEAD, manifestEnvelopeProblem, openManifestPage, pageOffset, plainBytesOf, sealManifestStream } from '../crypto/index.js';
import { BlockrepError } from '../shared/index.js';

/**
 * The manifests of an encrypted repository, seen in plaintext: a Backend over the repository's
 * own whose manifest objects are sealed in pages (crypto/manifest-pages.ts) on the way out and
 * opened on the way in, range by range, so ManifestReader works on them unchanged and memory
 * stays at the pages of one read. Only manifests pass through it.
 */
export class SealedManifestBackend implements Backend {
  readonly remote: boolean;
  /** Versions never change: their plaintext size and envelope header are asked for once. */
  private readonly known = new Map<string, { plain: number; head: Buffer }>();

  constructor(
    private readonly inner: Backend,
    private readonly sealKey: Uint8Array,
  ) {
    this.remote = inner.remote ?? false;
  }

  get location(): string {
    return this.inner.location;
  }

  async size(key: string): Promise<number | undefined> {
    const sealed = await this.inner.size(key);
    if (sealed === undefined) return undefined;
    const plain = plainBytesOf(sealed);
    if (plain === undefined) throw new BlockrepError('REPO_CORRUPT', `manifest ${key}: ${sealed} bytes is not the size of a sealed manifest (truncated or not sealed)`);
    return plain;
  }

  async sizes(keys: string[]): Promise<Array<number | undefined>> {
    return Promise.all(keys.map((k) => this.size(k)));
  }

  private async describe(key: string): Promise<{ plain: number; head: Buffer }> {
    const seen = this.known.get(key);
    if (seen) return seen;
    const sealed = await this.inner.size(key);
    if (sealed === undefined) throw new BlockrepError('NOT_FOUND', `${key} does not exist`);
    const head = await this.inner.read(key, 0, MANIFEST_ENVELOPE_HEADER_BYTES);
    const problem = manifestEnvelopeProblem(head, sealed);
    if (problem !== undefined) throw new BlockrepError('REPO_CORRUPT', `manifest ${key}: ${problem}`);
    const described = { plain: plainBytesOf(sealed)!, head };
    if (this.known.size >= 1024) this.known.clear();
    this.known.set(key, described);
    return described;
  }

  async read(key: string, offset = 0, length?: number): Promise<Buffer> {
    const { plain: plainBytes, head } = await this.describe(key);
    const end = Math.min(plainBytes, length === undefined ? plainBytes : offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const lastPage = Math.ceil(plainBytes / MANIFEST_PAGE_BYTES) - 1;
    const first = Math.floor(offset / MANIFEST_PAGE_BYTES);
    const last = Math.floor((end - 1) / MANIFEST_PAGE_BYTES);
    const sealedEnd = last === lastPage ? pageOffset(lastPage) + (plainBytes - lastPage * MANIFEST_PAGE_BYTES) + SEAL_OVERHEAD : pageOffset(last + 1);
    const sealed = await this.inner.read(key, pageOffset(first), sealedEnd - pageOffset(first));
    const parts: Buffer[] = [];
    for (let page = first; page <= last; page++) {
      const at = pageOffset(page) - pageOffset(first);
      const pageSealed = page === lastPage ? sealed.subarray(at) : sealed.subarray(at, at + MANIFEST_PAGE_BYTES + SEAL_OVERHEAD);
      const plain = openManifestPage(this.sealKey, head, key, page, page === lastPage, pageSealed);
      if (plain === undefined) {
        throw new BlockrepError('REPO_CORRUPT', `manifest ${key} does not open with this repository's key (page ${page}): it was damaged, cut short, or copied from another disk or version`);
      }
      const from = page === first ? offset - page * MANIFEST_PAGE_BYTES : 0;
      const to = page === last ? end - page * MANIFEST_PAGE_BYTES : plain.length;
      parts.push(plain.subarray(from, to));
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: { exclusive?: boolean; deferSync?: boolean }): Promise<number> {
    return this.inner.write(key, sealManifestStream(this.sealKey, key, data instanceof Uint8Array ? [data] : data), options);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  list(prefix: string): AsyncIterable<{ key: string; size: number; mtimeMs?: number | undefined }> {
    return this.inner.list(prefix);
  }

  remove(key: string): Promise<void> {
    this.known.delete(key);
    return this.inner.remove(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
