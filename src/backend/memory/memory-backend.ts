import { BlockrepError, systemClock, type Clock } from '../../shared/index.js';
import { contentTag, type Backend, type BackendObject, type ConditionalRemoval, type SizesOptions, type TempSweep, type WriteOptions } from '../backend.js';

/** The same keys LocalBackend accepts, so a test on memory does not pass what a disk refuses. */
const KEY = /^[A-Za-z0-9._%-]+(\/[A-Za-z0-9._%-]+)*$/;

interface StoredObject {
  data: Buffer;
  /** By the backend's clock: writes and touches set it, objectAgeMs and removeIfOlder read it. */
  mtimeMs: number;
}

/**
 * A repository held in this process's memory, for fast unit tests of the layers above (restic's
 * mem backend). Its modification times come from an injectable clock, so leases and gc cutoffs
 * are tested by moving a ManualClock instead of sleeping. Every check-and-change (exclusive
 * write, replaceIfMatch, removeIfOlder, touch) happens without an await in between, so it is
 * atomic against every other call, as a server's are.
 */
export class MemoryBackend implements Backend {
  readonly location: string;
  private readonly objects = new Map<string, StoredObject>();
  private readonly clock: Clock;

  constructor(options: { clock?: Clock; location?: string } = {}) {
    this.clock = options.clock ?? systemClock;
    this.location = options.location ?? 'memory:';
  }

  private check(key: string): string {
    if (!KEY.test(key) || key.split('/').some((s) => s === '.' || s === '..')) {
      throw new BlockrepError('INTERNAL', `invalid object key ${JSON.stringify(key)}`);
    }
    return key;
  }

  async size(key: string): Promise<number | undefined> {
    return this.objects.get(this.check(key))?.data.length;
  }

  async sizes(keys: string[], options: SizesOptions = {}): Promise<Array<number | undefined>> {
    const now = this.clock.now();
    return keys.map((key) => {
      const obj = this.objects.get(this.check(key));
      if (obj && options.touch) obj.mtimeMs = now;
      return obj?.data.length;
    });
  }

  async read(key: string, offset = 0, length?: number): Promise<Buffer> {
    const obj = this.objects.get(this.check(key));
    if (!obj) throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`);
    const end = length === undefined ? obj.data.length : Math.min(obj.data.length, offset + length);
    // A copy: callers may keep or change what they read without changing what is stored.
    return Buffer.from(obj.data.subarray(Math.min(offset, obj.data.length), Math.max(offset, end)));
  }

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: WriteOptions = {}): Promise<number> {
    this.check(key);
    let bytes: Buffer;
    if (data instanceof Uint8Array) {
      bytes = Buffer.from(data);
    } else {
      const pieces: Buffer[] = [];
      for await (const piece of data) pieces.push(Buffer.from(piece));
      bytes = Buffer.concat(pieces);
    }
    // The whole body is in hand before the object appears: readers never see a partial one.
    if (options.exclusive && this.objects.has(key)) throw new BlockrepError('EXISTS', `${key} already exists in ${this.location}`);
    this.objects.set(key, { data: bytes, mtimeMs: this.clock.now() });
    return bytes.length;
  }

  async objectAgeMs(key: string): Promise<number | undefined> {
    const obj = this.objects.get(this.check(key));
    // Never negative, like LocalBackend: a clock stepped back makes an object fresh, not "future".
    return obj === undefined ? undefined : Math.max(0, this.clock.now() - obj.mtimeMs);
  }

  async replaceIfMatch(key: string, tag: string, data: Uint8Array | null): Promise<boolean> {
    const obj = this.objects.get(this.check(key));
    if (obj === undefined || contentTag(obj.data) !== tag) return false;
    if (data === null) this.objects.delete(key);
    else this.objects.set(key, { data: Buffer.from(data), mtimeMs: this.clock.now() });
    return true;
  }

  async flush(): Promise<void> {
    // Nothing to make durable: memory is as durable as it gets.
  }

  async *list(prefix: string): AsyncIterable<BackendObject> {
    // Sorted like a directory walk; objects removed while the caller iterates are skipped.
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    for (const key of keys) {
      const obj = this.objects.get(key);
      if (obj) yield { key, size: obj.data.length, mtimeMs: obj.mtimeMs };
    }
  }

  async remove(key: string): Promise<void> {
    this.objects.delete(this.check(key));
  }

  async removeIfOlder(key: string, cutoffMs: number): Promise<ConditionalRemoval> {
    const obj = this.objects.get(this.check(key));
    if (obj === undefined) return 'missing';
    if (obj.mtimeMs >= cutoffMs) return 'young';
    this.objects.delete(key);
    return 'removed';
  }

  async removeStaleTemps(_cutoffMs: number): Promise<TempSweep> {
    // Writes here are whole or absent: there are never temporary leftovers.
    return { files: 0, bytes: 0 };
  }

  /**
   * Sets an object's modification time (tests age objects with it, as `touch -d` would a file).
   * Throws NOT_FOUND for a missing object.
   */
  setModified(key: string, mtimeMs: number): void {
    const obj = this.objects.get(this.check(key));
    if (!obj) throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`);
    obj.mtimeMs = mtimeMs;
  }

  async close(): Promise<void> {
    // Kept after close, like a directory: a test may open the same backend again.
  }
}
