import { RateLimiter, throttle } from '../shared/index.js';
import type { Backend, BackendObject, SizesOptions, WriteOptions } from './backend.js';

/**
 * `--bwlimit`: wraps any backend so the bytes it writes and reads flow at no more than the
 * limiter's rate (one limiter per direction, shared by every request). Metadata calls pass.
 */
export class RateLimitedBackend implements Backend {
  readonly writeManifestDelta: Backend['writeManifestDelta'];
  readonly planChunkPatches: Backend['planChunkPatches'];
  readonly writeChunkPatch: Backend['writeChunkPatch'];
  readonly removeIfOlder: Backend['removeIfOlder'];
  readonly removeStaleTemps: Backend['removeStaleTemps'];
  readonly objectAgeMs: Backend['objectAgeMs'];
  readonly replaceIfMatch: Backend['replaceIfMatch'];
  readonly requestCounts: Backend['requestCounts'];

  constructor(
    private readonly inner: Backend,
    private readonly upload: RateLimiter,
    private readonly download: RateLimiter = upload,
  ) {
    const sendDelta = inner.writeManifestDelta?.bind(inner);
    this.writeManifestDelta = sendDelta
      ? async (key, delta) => {
          await this.upload.take(delta.byteLength);
          return sendDelta(key, delta);
        }
      : undefined;
    this.planChunkPatches = inner.planChunkPatches?.bind(inner);
    this.removeIfOlder = inner.removeIfOlder?.bind(inner);
    this.removeStaleTemps = inner.removeStaleTemps?.bind(inner);
    this.objectAgeMs = inner.objectAgeMs?.bind(inner);
    this.replaceIfMatch = inner.replaceIfMatch?.bind(inner);
    this.requestCounts = inner.requestCounts?.bind(inner);
    const sendPatch = inner.writeChunkPatch?.bind(inner);
    this.writeChunkPatch = sendPatch
      ? async (key, patch) => {
          await this.upload.take(patch.byteLength);
          return sendPatch(key, patch);
        }
      : undefined;
  }

  get location(): string {
    return this.inner.location;
  }

  get remote(): boolean {
    return this.inner.remote ?? false;
  }

  size(key: string): Promise<number | undefined> {
    return this.inner.size(key);
  }

  sizes(keys: string[], options?: SizesOptions): Promise<Array<number | undefined>> {
    return this.inner.sizes(keys, options);
  }

  async read(key: string, offset?: number, length?: number): Promise<Buffer> {
    const data = await this.inner.read(key, offset, length);
    await this.download.take(data.length);
    return data;
  }

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: WriteOptions): Promise<number> {
    if (data instanceof Uint8Array) {
      // Paid for up front and passed whole, so a backend can still retry it.
      await this.upload.take(data.byteLength);
      return this.inner.write(key, data, options);
    }
    return this.inner.write(key, throttle(data, this.upload), options);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  list(prefix: string): AsyncIterable<BackendObject> {
    return this.inner.list(prefix);
  }

  remove(key: string): Promise<void> {
    return this.inner.remove(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
