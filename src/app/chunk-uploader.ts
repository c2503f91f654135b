import { unpackChunk, type EncodedChunk } from '../chunk/chunk-codec.js';
import { DEFAULT_SLICE_BYTES, encodePatch, sliceHashes } from '../chunk/chunk-patch.js';
import type { Repository } from '../repository/repository.js';
import { isBlockrepError } from '../shared/blockrep-error.js';
import type { TaskPool } from '../shared/task-pool.js';

export interface UploadTotals {
  bytesSent: number;
  storedBytes: number;
  newChunks: number;
  reusedChunks: number;
  patchedChunks: number;
}

const BATCH_CHUNKS = 64;
/** Ids remembered to skip repeats within a run; forgotten past this (the batched check still dedups). */
const MAX_REMEMBERED = 65_536;

/**
 * Gets the changed chunks of a backup into the repository with as few bytes and round trips as
 * it can: chunks are gathered in batches; one batched question finds those the repository
 * already holds (sent by a run that was interrupted, or by another disk); where the repository
 * takes patches, one more finds which slices of each remaining block differ from the chunk the
 * block had before, and only those slices travel. Everything else is sent whole. Uploads run
 * on the shared pool, so memory is bounded by the batch plus the uploads in flight.
 */
export class ChunkUploader {
  private batch: Array<{ chunk: EncodedChunk; baseId: string | undefined }> = [];
  private readonly queued = new Set<string>();

  constructor(
    private readonly repo: Repository,
    private readonly pool: TaskPool,
    readonly totals: UploadTotals,
    private readonly sliceBytes = DEFAULT_SLICE_BYTES,
  ) {}

  /** Queues a chunk; `baseId` is the chunk the same block had in the parent version. */
  async add(chunk: EncodedChunk, baseId: string | undefined): Promise<void> {
    if (this.queued.has(chunk.id)) return; // the same content twice in one run
    if (this.queued.size >= MAX_REMEMBERED) this.queued.clear();
    this.queued.add(chunk.id);
    this.batch.push({ chunk, baseId: baseId === chunk.id ? undefined : baseId });
    if (this.batch.length >= BATCH_CHUNKS) await this.sendBatch();
  }

  /** Sends what is queued and waits for every upload. */
  async finish(): Promise<void> {
    await this.sendBatch();
    await this.pool.drain();
  }

  private async sendBatch(): Promise<void> {
    const batch = this.batch;
    this.batch = [];
    if (batch.length === 0) return;
    const present = await this.repo.hasChunks(batch.map((b) => b.chunk.id));
    const missing = batch.filter((_, i) => !present[i]);
    this.totals.reusedChunks += batch.length - missing.length;

    const patchable = this.repo.patchesChunks ? missing.filter((m) => m.baseId !== undefined) : [];
    const raws = new Map<string, Buffer>();
    for (const m of patchable) raws.set(m.chunk.id, unpackChunk(m.chunk.blob, m.chunk.id)); // hashed when encoded: no second SHA-256
    const plans = await this.repo.planChunkPatches(
      this.sliceBytes,
      patchable.map((m) => ({ baseId: m.baseId!, hashes: sliceHashes(raws.get(m.chunk.id)!, this.sliceBytes) })),
    );
    const planOf = new Map(patchable.map((m, i) => [m.chunk.id, plans[i]]));

    for (const m of missing) {
      const plan = planOf.get(m.chunk.id);
      const raw = raws.get(m.chunk.id);
      await this.pool.submit(async () => {
        if (plan && raw && m.baseId) {
          const patch = encodePatch(raw, this.sliceBytes, m.baseId, plan);
          if (patch.length < m.chunk.blob.length) {
            try {
              const n = await this.repo.putChunkPatch(m.chunk.id, patch);
              this.count(n, true);
              return;
            } catch (err) {
              // The far side could not rebuild it (its base changed, or is gone): send it whole.
              if (!isBlockrepError(err) || (err.code !== 'BAD_REQUEST' && err.code !== 'CHUNK_CORRUPT')) throw err;
            }
          }
        }
        this.count(await this.repo.putChunk(m.chunk), false);
      });
    }
  }

  private count(bytes: number, patched: boolean): void {
    this.totals.bytesSent += bytes;
    this.totals.storedBytes += bytes;
    this.totals.newChunks++;
    if (patched) this.totals.patchedChunks++;
  }
}
