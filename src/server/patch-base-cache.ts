import { blobCodec, CODEC_STORED, decodeChunk } from '../chunk/index.js';
import type { Repository } from '../repository/index.js';

export interface PatchBase {
  /** The content, checked against its id. */
  raw: Buffer;
  /** The base is stored uncompressed: zstd found nothing to gain in it. */
  incompressible: boolean;
}

/** Room for the bases of a few batches a client plans ahead (256 at 256 KiB blocks). */
export const DEFAULT_PATCH_BASE_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * The decoded, checked content of base chunks recently read for a patch plan, kept until the
 * patch that follows the plan arrives, so that a patched block costs one read, decompression
 * and SHA-256 of its base, not two. Least recently used first out, bounded in bytes. What is
 * kept was checked against its SHA-256 when read, and chunks are immutable, so a kept base is
 * the content its id names even if its file is damaged or removed afterwards; the block rebuilt
 * from it is hashed again before it is stored in any case.
 */
export class PatchBaseCache {
  private readonly bases = new Map<string, PatchBase>();
  private bytes = 0;
  private turns: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly repo: Repository,
    private readonly capacityBytes = DEFAULT_PATCH_BASE_CACHE_BYTES,
  ) {}

  /**
   * The content of chunk `id`, from here or read and checked (CHUNK_MISSING, CHUNK_CORRUPT);
   * undefined if it is not here and its content is larger than `maxRawBytes` (known from the
   * blob's header, before it is decompressed and hashed).
   */
  async get(id: string, maxRawBytes = Infinity): Promise<PatchBase | undefined> {
    const kept = this.bases.get(id);
    if (kept) {
      this.bases.delete(id); // to the end: most recently used
      this.bases.set(id, kept);
      return kept;
    }
    const blob = await this.repo.readChunkBlob(id);
    if (blob.length >= 12 && blob.readUInt32BE(8) > maxRawBytes) return undefined;
    const base = { raw: decodeChunk(blob, id), incompressible: blobCodec(blob) === CODEC_STORED };
    this.keep(id, base);
    return base;
  }

  /**
   * Runs `work` (a base decoded, hashed and compared: tens of ms of CPU on the event loop) after
   * the work of every plan before it: however many plans arrive at once, another request waits
   * for at most one such step, not one per plan.
   */
  inTurn<T>(work: () => Promise<T>): Promise<T> {
    const run = this.turns.catch(() => undefined).then(work);
    this.turns = run.catch(() => undefined);
    return run;
  }

  private keep(id: string, base: PatchBase): void {
    if (base.raw.length > this.capacityBytes || this.bases.has(id)) return;
    this.bases.set(id, base);
    this.bytes += base.raw.length;
    for (const [oldest, kept] of this.bases) {
      if (this.bytes <= this.capacityBytes) break;
      this.bases.delete(oldest);
      this.bytes -= kept.raw.length;
    }
  }
}
