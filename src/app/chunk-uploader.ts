import { unpackChunk, type EncodedChunk, DEFAULT_SLICE_BYTES, encodePatch, sliceHashes } from '../chunk/index.js';
import { releaseBuffer } from '../backend/index.js';
import type { Repository } from '../repository/index.js';
import { isBlockrepError, type TaskPool } from '../shared/index.js';

export interface UploadTotals {
  bytesSent: number;
  storedBytes: number;
  newChunks: number;
  reusedChunks: number;
  patchedChunks: number;
}

/** A batch closes at this many chunks or at BATCH_BYTES of blobs, whichever comes first. */
const BATCH_CHUNKS = 64;
const BATCH_BYTES = 16 * 1024 * 1024;
/**
 * ...or at this many when every earlier upload is already in the pool: then the pool is about
 * to run dry, and waiting for a full batch (a slow scan, the first blocks of a run) would idle
 * the link.
 */
const EAGER_CHUNKS = 8;
/**
 * Batches between "full" and "every upload handed to the pool": while one batch's uploads go
 * out, the next one's questions are already being answered, so the pool never waits for a
 * round trip. Memory: at most this many batches of blobs plus the uploads in flight.
 */
const BATCHES_AHEAD = 3;
/** Ids remembered to skip repeats within a run; forgotten past this (the batched check still dedups). */
const MAX_REMEMBERED = 65_536;

interface Pending {
  chunk: EncodedChunk;
  baseId: string | undefined;
}

interface Batch {
  items: Pending[];
  /** Per item: present already, or the slice plan of its patch (undefined: send it whole). */
  answers: Promise<Array<{ present: boolean; plan: Buffer | undefined }>>;
}

/**
 * Gets the changed chunks of a backup into the repository with as few bytes and round trips as
 * it can: chunks are gathered in batches; for each batch, one batched question finds those the
 * repository already holds (sent by a run that was interrupted, or by another disk) and, where
 * the repository takes patches, another (at the same time) finds which slices of each block
 * differ from the chunk the block had before, so only those slices travel. Everything else is
 * sent whole. The questions of later batches are asked while earlier batches upload (up to
 * BATCHES_AHEAD batches), and a single pump hands the answered batches' uploads to the shared
 * pool in order, so the pool stays full and memory stays bounded.
 */
export class ChunkUploader {
  private batch: Pending[] = [];
  private batchBytes = 0;
  private readonly queued = new Set<string>();
  /** Batches asked about whose uploads are not all handed to the pool yet, oldest first. */
  private readonly ahead: Batch[] = [];
  private pump: Promise<void> = Promise.resolve();
  private pumping = false;
  /** Wakes add() when a batch leaves `ahead`. */
  private wake: (() => void) | undefined;
  private failure: { error: unknown } | undefined;

  constructor(
    private readonly repo: Repository,
    private readonly pool: TaskPool,
    readonly totals: UploadTotals,
    private readonly sliceBytes = DEFAULT_SLICE_BYTES,
  ) {}

  /** Queues a chunk; `baseId` is the chunk the same block had in the parent version. */
  async add(chunk: EncodedChunk, baseId: string | undefined): Promise<void> {
    this.throwIfFailed();
    if (this.queued.has(chunk.id)) return; // the same content twice in one run
    if (this.queued.size >= MAX_REMEMBERED) this.queued.clear();
    this.queued.add(chunk.id);
    this.batch.push({ chunk, baseId: baseId === chunk.id ? undefined : baseId });
    this.batchBytes += chunk.blob.byteLength;
    if (this.batch.length >= BATCH_CHUNKS || this.batchBytes >= BATCH_BYTES || (this.ahead.length === 0 && this.batch.length >= EAGER_CHUNKS)) {
      await this.dispatch();
    }
  }

  /** Sends what is queued and waits for every upload; rethrows the first failure. */
  async finish(): Promise<void> {
    try {
      await this.dispatch();
      await this.pump;
      this.throwIfFailed();
      await this.pool.drain();
    } catch (error) {
      this.failure ??= { error };
      await this.settle();
      throw error;
    }
  }

  /** Waits until nothing of this uploader runs any more, ignoring failures (cleanup paths). */
  async settle(): Promise<void> {
    this.failure ??= { error: new Error('settled') }; // stop handing out uploads
    await Promise.allSettled(this.ahead.map((b) => b.answers));
    await this.pump;
    await this.pool.settle();
  }

  /** Asks the questions of the gathered batch and queues it for the pump; backpressure here. */
  private async dispatch(): Promise<void> {
    const items = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    if (items.length === 0) return;
    while (this.ahead.length >= BATCHES_AHEAD) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.throwIfFailed();
    }
    const answers = this.ask(items);
    answers.catch(() => undefined); // the pump reports it; never an unhandled rejection
    this.ahead.push({ items, answers });
    if (!this.pumping) {
      this.pumping = true;
      this.pump = this.run();
    }
  }

  private async ask(items: Pending[]): Promise<Array<{ present: boolean; plan: Buffer | undefined }>> {
    const patchable = this.repo.patchesChunks ? items.filter((m) => m.baseId !== undefined) : [];
    // Hashed when encoded: unpacked without a second SHA-256, and not kept (memory).
    const hashes = patchable.map((m) => ({ baseId: m.baseId!, hashes: sliceHashes(unpackChunk(m.chunk.blob, m.chunk.id), this.sliceBytes) }));
    const [present, plans] = await Promise.all([
      // A stored copy of another size may be one a crash cut short: it is sent again.
      this.repo.hasChunks(
        items.map((m) => m.chunk.id),
        { blobBytes: items.map((m) => m.chunk.blob.byteLength) },
      ),
      patchable.length > 0 ? this.repo.planChunkPatches(this.sliceBytes, hashes) : Promise.resolve([]),
    ]);
    const planOf = new Map(patchable.map((m, i) => [m, plans[i]]));
    return items.map((m, i) => ({ present: present[i] === true, plan: planOf.get(m) }));
  }

  /** Hands the answered batches' uploads to the pool, oldest batch first, until none is left. */
  private async run(): Promise<void> {
    try {
      while (this.ahead.length > 0 && !this.failure) {
        const batch = this.ahead[0]!;
        const answers = await batch.answers;
        for (let i = 0; i < batch.items.length && !this.failure; i++) {
          const m = batch.items[i]!;
          const answer = answers[i]!;
          if (answer.present) {
            this.totals.reusedChunks++;
            releaseBuffer(m.chunk.blob);
            continue;
          }
          await this.pool.submit(() => this.upload(m, answer.plan));
        }
        this.ahead.shift();
        this.wake?.();
      }
    } catch (error) {
      this.failure ??= { error };
    } finally {
      // In the same tick as the loop's last check: a batch queued after it starts a new pump.
      this.pumping = false;
      this.wake?.();
    }
  }

  /**
   * Stores one chunk, then frees its blob at once (releaseBuffer): the uploader holds the only
   * use of it (the scan hands each blob over once), and V8 would keep it as garbage for a while.
   */
  private async upload(m: Pending, plan: Buffer | undefined): Promise<void> {
    await this.store(m, plan);
    releaseBuffer(m.chunk.blob);
  }

  private async store(m: Pending, plan: Buffer | undefined): Promise<void> {
    if (plan && m.baseId) {
      const patch = encodePatch(unpackChunk(m.chunk.blob, m.chunk.id), this.sliceBytes, m.baseId, plan);
      if (patch.length < m.chunk.blob.length) {
        try {
          this.count(await this.repo.putChunkPatch(m.chunk.id, patch), true);
          return;
        } catch (err) {
          // The far side could not rebuild it (its base changed, or is gone): send it whole.
          if (!isBlockrepError(err) || (err.code !== 'BAD_REQUEST' && err.code !== 'CHUNK_CORRUPT')) throw err;
        }
      }
    }
    this.count(await this.repo.putChunk(m.chunk), false);
  }

  private count(bytes: number, patched: boolean): void {
    this.totals.bytesSent += bytes;
    this.totals.storedBytes += bytes;
    this.totals.newChunks++;
    if (patched) this.totals.patchedChunks++;
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}
