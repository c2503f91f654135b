import type { RepositoryKeys } from '../crypto/index.js';
import { encodeChunk } from '../chunk/index.js';
import type { Extent, ImageReader } from '../image/index.js';
import { isAllZero } from './all-zero.js';
import type { SegmentResult, SegmentTask } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { Xxh64Wasm } from './xxh64-wasm.js';

export interface SegmentScannerOptions {
  reader: ImageReader;
  geometry: ScanGeometry;
  /** Must have an arena of at least arenaBytesFor(geometry, unitBytes, readAhead) bytes. */
  hasher: Xxh64Wasm;
  /** Target size of one read; rounded down to whole blocks, at least one block. */
  unitBytes: number;
  /** Reads kept in flight while the current unit is hashed (at least 1). */
  readAhead: number;
  /** zeroBlockHash(blockSize) and zeroBlockHash(last block's length). */
  zeroHash: bigint;
  lastZeroHash: bigint;
  compress: boolean;
  /** An encrypted repository's keys: chunks are then named by keyed hash and sealed. */
  keys?: RepositoryKeys | undefined;
  signal?: AbortSignal | undefined;
}

/** A run of blocks inside one segment that is read (and hashed) together, or known zero. */
interface Unit {
  task: SegmentTask;
  /** First block, relative to the task's startBlock. */
  first: number;
  count: number;
  knownZero: boolean;
  /** Blocks not to read (a tracked scan's clean blocks): they keep the parent's hashes. */
  skip: boolean;
  lastOfTask: boolean;
  /** Arena slot the unit is read into; -1 for known-zero units. */
  slot: number;
}

/** Arena a SegmentScanner needs: one slot per read in flight plus the one being hashed. */
export function arenaBytesFor(geometry: ScanGeometry, unitBytes: number, readAhead: number): number {
  return (Math.max(1, readAhead) + 1) * unitBlocks(geometry, unitBytes) * geometry.blockSize;
}

function unitBlocks(geometry: ScanGeometry, unitBytes: number): number {
  return Math.max(1, Math.floor(unitBytes / geometry.blockSize));
}

/**
 * The hot loop, the same in a worker thread and in the main thread. It turns a stream of
 * segment tasks into segment results, keeping `readAhead` reads in flight while it hashes,
 * checks and encodes the unit read before — reading (a copy done by the kernel on a libuv
 * thread) and hashing (on this thread) overlap. Reads go straight into the hasher's
 * WebAssembly memory, so each byte is copied once (kernel → arena) and read once more by the
 * hash; only changed, non-zero blocks are read a third time, by SHA-256 and zstd.
 *
 * Regions the reader reports as zero extents are neither read nor hashed. Memory is bounded
 * by the arena and by the results of the segment being filled.
 */
export class SegmentScanner {
  private readonly o: SegmentScannerOptions;
  private readonly unitBlocks: number;
  private readonly slotBytes: number;
  private readonly slots: number;
  private readonly depth: number;
  private readonly reads = new Set<Promise<unknown>>();

  constructor(options: SegmentScannerOptions) {
    this.o = options;
    this.unitBlocks = unitBlocks(options.geometry, options.unitBytes);
    this.slotBytes = this.unitBlocks * options.geometry.blockSize;
    this.depth = Math.max(1, options.readAhead);
    this.slots = this.depth + 1;
    if (options.hasher.arenaBytes < this.slots * this.slotBytes) {
      throw new RangeError(`hasher arena ${options.hasher.arenaBytes} < ${this.slots} slots of ${this.slotBytes}`);
    }
  }

  async *run(tasks: AsyncIterable<SegmentTask> | Iterable<SegmentTask>): AsyncGenerator<SegmentResult> {
    const units = this.plan(tasks);
    const pending: Array<Promise<Unit | undefined>> = [];
    let issued = 0;
    let exhausted = false;
    const fill = (): void => {
      while (!exhausted && pending.length < this.depth) {
        const p = this.load(units, issued++ % this.slots);
        p.catch(() => undefined); // awaited below; a later rejection must not be "unhandled"
        pending.push(p);
      }
    };
    let result: SegmentResult | undefined;
    try {
      fill();
      for (;;) {
        const next = pending.shift();
        if (next === undefined) break;
        const unit = await next;
        this.o.signal?.throwIfAborted();
        if (unit === undefined) {
          exhausted = true;
          break;
        }
        // Keep the read-ahead going while this unit is processed (its slot is not reused
        // until the unit after it has been awaited: readAhead + 1 slots, round robin).
        fill();
        result ??= newResult(unit.task);
        this.process(unit, result);
        if (unit.lastOfTask) {
          const done = result;
          result = undefined;
          yield done;
        }
      }
    } finally {
      exhausted = true;
      // Reads still in flight write into the arena; wait for them before anyone reuses or
      // closes anything. (Waiting on `pending` itself could wait for tasks that never come.)
      await Promise.allSettled([...this.reads]);
      // Not awaited: a load may be parked in units.next() waiting for a task that will never
      // come (a worker's queue), and return() queues behind it. Waiting here would keep an
      // error from ever being reported.
      units.return(undefined).catch(() => undefined);
    }
  }

  /** Next unit, with its bytes read into `slot` unless it is known zero. */
  private async load(units: AsyncGenerator<Omit<Unit, 'slot'>>, slot: number): Promise<Unit | undefined> {
    const next = await units.next();
    if (next.done) return undefined;
    const unit: Unit = { ...next.value, slot: next.value.knownZero || next.value.skip ? -1 : slot };
    if (unit.slot >= 0) {
      const { geometry, hasher, reader } = this.o;
      const startBlock = unit.task.startBlock + unit.first;
      const offset = geometry.blockOffset(startBlock);
      const length = Math.min(unit.count * geometry.blockSize, geometry.virtualSize - offset);
      const read = reader.read(hasher.view(slot * this.slotBytes, length), offset);
      this.reads.add(read);
      try {
        await read;
      } finally {
        this.reads.delete(read);
      }
    }
    return unit;
  }

  /** Splits each task into runs of known-zero blocks and reads of at most unitBlocks blocks. */
  private async *plan(tasks: AsyncIterable<SegmentTask> | Iterable<SegmentTask>): AsyncGenerator<Omit<Unit, 'slot'>> {
    const { geometry, reader } = this.o;
    for await (const task of tasks) {
      const start = geometry.blockOffset(task.startBlock);
      const end = Math.min(geometry.blockOffset(task.startBlock + task.count), geometry.virtualSize);
      const zeroKnown = zeroBlocks(await reader.extents(start, end - start), start, end, geometry.blockSize, task.count);
      // Each block is one of: skipped (2), known zero (1), to read (0).
      const kind = (b: number): number => (task.skip?.[b] === 1 ? 2 : zeroKnown[b] === 1 ? 1 : 0);
      for (let first = 0; first < task.count; ) {
        const k = kind(first);
        const limit = k !== 0 ? task.count : Math.min(task.count, first + this.unitBlocks);
        let last = first + 1;
        while (last < limit && kind(last) === k) last++;
        yield { task, first, count: last - first, knownZero: k === 1, skip: k === 2, lastOfTask: last === task.count };
        first = last;
      }
    }
  }

  /** Hashes the unit's blocks, flags zeros and changes, encodes changed non-zero blocks. */
  private process(unit: Unit, result: SegmentResult): void {
    const { geometry, hasher, zeroHash, lastZeroHash, compress, keys } = this.o;
    const parent = unit.task.parent;
    const lastBlock = geometry.blockCount - 1;
    for (let i = unit.first; i < unit.first + unit.count; i++) {
      const block = unit.task.startBlock + i;
      const expectZero = block === lastBlock ? lastZeroHash : zeroHash;
      let hash: bigint;
      let zero: boolean;
      let offset = 0;
      let length = 0;
      if (unit.skip) {
        // Not read: the tracker says it is as the parent has it.
        hash = parent![i]!;
        result.hashes[i] = hash;
        if (hash === expectZero) result.zero[i] = 1;
        continue;
      }
      if (unit.knownZero) {
        hash = expectZero;
        zero = true;
      } else {
        offset = unit.slot * this.slotBytes + (i - unit.first) * geometry.blockSize;
        length = geometry.blockLength(block);
        hash = hasher.hash(offset, length);
        zero = hash === expectZero && isAllZero(hasher.view(offset, length));
        result.bytesRead += length;
      }
      result.hashes[i] = hash;
      const changed = parent === undefined || parent[i] !== hash;
      if (zero) result.zero[i] = 1;
      if (changed) {
        result.changed[i] = 1;
        if (!zero) result.chunks.push({ index: block, chunk: encodeChunk(hasher.view(offset, length), { compress, keys }) });
      }
    }
  }
}

function newResult(task: SegmentTask): SegmentResult {
  return {
    seq: task.seq,
    startBlock: task.startBlock,
    count: task.count,
    hashes: new BigUint64Array(task.count),
    zero: new Uint8Array(task.count),
    changed: new Uint8Array(task.count),
    chunks: [],
    bytesRead: 0,
  };
}

/**
 * Marks the blocks of [start, end) that lie wholly inside zero extents (adjacent zero extents
 * merged), so they need not be read. Anything the extents do not cover is treated as data.
 */
export function zeroBlocks(extents: Extent[], start: number, end: number, blockSize: number, count: number): Uint8Array {
  const marks = new Uint8Array(count);
  let runStart = -1;
  let runEnd = -1;
  const flush = (): void => {
    if (runStart < 0) return;
    const from = Math.max(runStart, start);
    const to = Math.min(runEnd, end);
    const first = Math.ceil((from - start) / blockSize);
    // A run reaching the end of the range also covers a short last block.
    const last = to === end ? count : Math.floor((to - start) / blockSize);
    for (let b = first; b < last; b++) marks[b] = 1;
    runStart = runEnd = -1;
  };
  for (const extent of extents) {
    if (extent.kind === 'zero' && extent.length > 0) {
      if (runStart >= 0 && extent.offset === runEnd) {
        runEnd += extent.length;
      } else {
        flush();
        runStart = extent.offset;
        runEnd = extent.offset + extent.length;
      }
    } else {
      flush();
    }
  }
  flush();
  return marks;
}
