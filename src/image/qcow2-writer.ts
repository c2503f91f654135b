import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BlockrepError, wrapSystemError } from '../shared/index.js';
import {
  QCOW2_HEADER_BYTES,
  QCOW2_MAX_REFTABLE_BYTES,
  QCOW2_REFCOUNT_ENTRY_BYTES,
  encodeQcow2Header,
  encodeTableEntry,
  fillRefcountBlock,
  l1EntriesFor,
  refcountLayout,
} from './qcow2-writer-format.js';
import { QCOW2_MAX_CLUSTER_SIZE, QCOW2_MAX_HOST_OFFSET, QCOW2_MAX_L1_BYTES, QCOW2_MIN_CLUSTER_SIZE } from './qcow2-limits.js';

export interface Qcow2WriterOptions {
  /** Power of two from 512 B to 2 MiB; default 64 KiB (QEMU's default). */
  clusterSize?: number;
  /** File mode of the image, whatever the umask; default 0600 (a disk image is private data). */
  mode?: number;
}

const DEFAULT_CLUSTER_SIZE = 65536;
/** Small writes are gathered into one buffer of this size and written with one call. */
const APPEND_BUFFER_BYTES = 8 * 1024 * 1024;

type WriterState = 'open' | 'finished' | 'failed' | 'aborted';

/**
 * Writes a qcow2 v3 image in one forward pass, for `restore --format qcow2`.
 *
 * File layout (every cluster from 0 to the end of the file is used exactly once, so the
 * refcount bookkeeping is a single counter):
 *
 * | clusters                      | content                                          |
 * |-------------------------------|--------------------------------------------------|
 * | 0                             | header (written last, in finish)                 |
 * | 1 .. L                        | L1 table, reserved at create, written in finish  |
 * | L+1 ..                        | data clusters in guest order, each L2 table      |
 * |                               | appended right after the data it maps            |
 * | then                          | refcount blocks (16-bit, all 1 up to file end)   |
 * | then                          | refcount table                                   |
 *
 * The header's size is the virtual size rounded up to whole 512-byte sectors (as QEMU does for
 * every image, raw included); the extra bytes read as zeros.
 *
 * Memory: the L1 table, one L2 table, one zero cluster and an 8 MiB append buffer, whatever
 * the virtual size. All-zero data clusters are not stored (they read as zeros because they
 * are unallocated). The image is built in `${path}.tmp-<random>` and renamed to `path` only
 * once complete and fsynced; the header (with its magic) is the last thing written into it.
 *
 * Calls must not overlap: await each `write` before the next one.
 */
export class Qcow2Writer {
  readonly path: string;
  /** Guest bytes the caller writes: writes may end exactly here. */
  readonly virtualSize: number;
  /**
   * The size recorded in the header: `virtualSize` rounded up to 512 bytes, because QEMU
   * rounds every image size (raw ones too) to whole sectors and would drop a partial one.
   */
  readonly imageVirtualSize: number;
  readonly clusterSize: number;

  private readonly tmpPath: string;
  private fh: FileHandle | undefined;
  private state: WriterState = 'open';
  private inflight: Promise<void> | undefined;

  private readonly l2Entries: number;
  private readonly l1Size: number;
  /** In-memory L1 table, padded to whole clusters. */
  private readonly l1: Buffer;
  /** The L2 table being filled, for L1 index `l2Index` (-1: none yet). */
  private readonly l2: Buffer;
  private l2Index = -1;
  private l2Used = false;
  private readonly zeroCluster: Buffer;

  /** Guest offset the next write may start at (end of the previous write). */
  private nextGuestOffset = 0;
  /** Bytes waiting in `pending`, to be written at host offset `pendingHostOffset`. */
  private readonly pending: Buffer;
  private pendingBytes = 0;
  private pendingHostOffset: number;

  private constructor(path: string, tmpPath: string, fh: FileHandle, virtualSize: number, clusterSize: number) {
    this.path = path;
    this.tmpPath = tmpPath;
    this.fh = fh;
    this.virtualSize = virtualSize;
    this.imageVirtualSize = roundUpToSector(virtualSize);
    this.clusterSize = clusterSize;
    this.l2Entries = clusterSize / 8;
    this.l1Size = l1EntriesFor(this.imageVirtualSize, clusterSize);
    const l1Clusters = Math.ceil((this.l1Size * 8) / clusterSize);
    this.l1 = Buffer.alloc(l1Clusters * clusterSize);
    this.l2 = Buffer.alloc(clusterSize);
    this.zeroCluster = Buffer.alloc(clusterSize);
    this.pending = Buffer.alloc(APPEND_BUFFER_BYTES);
    this.pendingHostOffset = (1 + l1Clusters) * clusterSize;
  }

  static async create(path: string, virtualSize: number, options: Qcow2WriterOptions = {}): Promise<Qcow2Writer> {
    const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
    if (
      !Number.isSafeInteger(clusterSize) ||
      clusterSize < QCOW2_MIN_CLUSTER_SIZE ||
      clusterSize > QCOW2_MAX_CLUSTER_SIZE ||
      (clusterSize & (clusterSize - 1)) !== 0
    ) {
      throw new BlockrepError('INTERNAL', `qcow2 cluster size must be a power of two from 512 B to 2 MiB, got ${clusterSize}`);
    }
    if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
      throw new BlockrepError('INTERNAL', `qcow2 virtual size must be a non-negative safe integer, got ${virtualSize}`);
    }
    const l1Bytes = l1EntriesFor(roundUpToSector(virtualSize), clusterSize) * 8;
    if (l1Bytes > QCOW2_MAX_L1_BYTES) {
      throw new BlockrepError(
        'RESTORE_TARGET',
        `a qcow2 image of ${virtualSize} bytes with ${clusterSize}-byte clusters needs an L1 table larger than QEMU accepts; use a larger cluster size or --format raw`,
        { details: { virtualSize, clusterSize } },
      );
    }
    const tmpPath = `${path}.tmp-${randomBytes(6).toString('hex')}`;
    let fh: FileHandle;
    try {
      fh = await open(tmpPath, 'wx', options.mode ?? 0o600);
    } catch (err) {
      throw wrapSystemError(err, `creating qcow2 image ${tmpPath}`);
    }
    try {
      await fh.chmod(options.mode ?? 0o600); // open's mode is masked by the umask
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(tmpPath).catch(() => undefined);
      throw wrapSystemError(err, `creating qcow2 image ${tmpPath}`);
    }
    return new Qcow2Writer(path, tmpPath, fh, virtualSize, clusterSize);
  }

  /**
   * Stores `data` at guest `offset`. Offsets strictly ascend and never overlap; offset and
   * length are multiples of the cluster size, except that the last write may end at the
   * virtual size. An I/O error deletes the partial file and leaves the writer failed.
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkUsable('write');
    this.checkWrite(offset, data.byteLength);
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.run(async () => {
      await this.writeClusters(offset, src);
      this.nextGuestOffset = offset + src.length;
    });
  }

  /** Writes the L2, L1 and refcount structures and the header, fsyncs, closes and renames into place. */
  async finish(): Promise<void> {
    this.checkUsable('finish');
    await this.run(async () => {
      await this.finishImage();
      this.state = 'finished';
    });
  }

  /** Closes and deletes the partial file. Safe in any state; does nothing after finish(). */
  async abort(): Promise<void> {
    if (this.inflight !== undefined) await this.inflight.catch(() => undefined);
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.discard();
  }

  // ---------------------------------------------------------------------------------------

  private checkUsable(op: string): void {
    if (this.inflight !== undefined) {
      throw new BlockrepError('INTERNAL', `Qcow2Writer.${op} called while another call is still running`);
    }
    if (this.state !== 'open') {
      throw new BlockrepError('INTERNAL', `Qcow2Writer.${op} called on a writer that is ${this.state}`);
    }
  }

  private checkWrite(offset: number, length: number): void {
    const cs = this.clusterSize;
    const bad = (why: string): BlockrepError =>
      new BlockrepError('INTERNAL', `Qcow2Writer.write(${offset}, ${length} bytes): ${why}`, {
        details: { offset, length, clusterSize: cs, virtualSize: this.virtualSize, nextOffset: this.nextGuestOffset },
      });
    if (!Number.isSafeInteger(offset) || offset < 0) throw bad('offset must be a non-negative integer');
    if (offset % cs !== 0) throw bad(`offset is not a multiple of the cluster size ${cs}`);
    if (offset < this.nextGuestOffset) throw bad(`writes must ascend without overlap; the next one may start at ${this.nextGuestOffset}`);
    const end = offset + length;
    if (end > this.virtualSize) throw bad(`ends past the virtual size ${this.virtualSize}`);
    if (length % cs !== 0 && end !== this.virtualSize) {
      throw bad(`length is not a multiple of the cluster size ${cs} and does not end at the virtual size`);
    }
  }

  /** Runs one I/O operation; on failure deletes the partial file and rethrows as BlockrepError. */
  private async run(op: () => Promise<void>): Promise<void> {
    const p = (async () => {
      try {
        await op();
      } catch (err) {
        if (this.state === 'open') {
          this.state = 'failed';
          await this.discard();
        }
        throw wrapSystemError(err, `writing qcow2 image ${this.path}`);
      }
    })();
    this.inflight = p;
    try {
      await p;
    } finally {
      this.inflight = undefined;
    }
  }

  /** Best effort: close and delete the temporary file. */
  private async discard(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    if (fh !== undefined) await fh.close().catch(() => undefined);
    await unlink(this.tmpPath).catch(() => undefined);
  }

  private handle(): FileHandle {
    if (this.fh === undefined) throw new BlockrepError('INTERNAL', 'qcow2 image file is closed');
    return this.fh;
  }

  private async writeClusters(offset: number, src: Buffer): Promise<void> {
    const cs = this.clusterSize;
    const l2Bytes = this.l2Entries * cs; // guest bytes one L2 table maps
    let pos = 0;
    while (pos < src.length) {
      const l1Index = Math.floor((offset + pos) / l2Bytes);
      if (l1Index !== this.l2Index) await this.switchL2(l1Index);
      const limit = Math.min(src.length, (l1Index + 1) * l2Bytes - offset);
      while (pos < limit && this.isZeroCluster(src, pos)) pos += cs;
      if (pos >= limit) {
        pos = limit;
        continue;
      }
      const runStart = pos;
      while (pos < limit && !this.isZeroCluster(src, pos)) pos += cs;
      const runEnd = Math.min(pos, src.length);
      const clusters = Math.ceil((runEnd - runStart) / cs);
      const hostOffset = await this.appendClusters(src.subarray(runStart, runEnd), clusters);
      const firstEntry = ((offset + runStart) / cs) % this.l2Entries;
      for (let i = 0; i < clusters; i++) encodeTableEntry(hostOffset + i * cs, this.l2, (firstEntry + i) * 8);
      this.l2Used = true;
    }
  }

  private isZeroCluster(src: Buffer, pos: number): boolean {
    const len = Math.min(this.clusterSize, src.length - pos);
    return src.subarray(pos, pos + len).equals(len === this.clusterSize ? this.zeroCluster : this.zeroCluster.subarray(0, len));
  }

  /** Appends the current L2 table (if it maps anything) and starts an empty one for `l1Index`. */
  private async switchL2(l1Index: number): Promise<void> {
    if (this.l2Used) {
      const hostOffset = await this.appendClusters(this.l2, 1);
      encodeTableEntry(hostOffset, this.l1, this.l2Index * 8);
      this.l2.fill(0);
      this.l2Used = false;
    }
    this.l2Index = l1Index;
  }

  /**
   * Appends `bytes`, zero-padded to `clusters` whole clusters, at the end of the file and
   * returns the host offset it lands at. Runs smaller than the buffer are copied into it (so
   * consecutive small writes become one big write); larger runs are written directly.
   */
  private async appendClusters(bytes: Buffer, clusters: number): Promise<number> {
    const cs = this.clusterSize;
    const total = clusters * cs;
    const hostOffset = this.pendingHostOffset + this.pendingBytes;
    if (hostOffset + total > QCOW2_MAX_HOST_OFFSET) {
      throw new BlockrepError('RESTORE_TARGET', `qcow2 image ${this.path} would grow past the largest offset qcow2 can address`);
    }
    if (total > this.pending.length - this.pendingBytes) await this.flush();
    let from = 0;
    if (total >= this.pending.length) {
      // Big run: the buffer is empty now; write the whole clusters straight from the caller's data.
      const whole = Math.floor(bytes.length / cs) * cs;
      await this.writeAt(bytes.subarray(0, whole), hostOffset);
      this.pendingHostOffset = hostOffset + whole;
      from = whole;
    }
    const rest = hostOffset + total - (this.pendingHostOffset + this.pendingBytes);
    if (rest > 0) {
      bytes.copy(this.pending, this.pendingBytes, from);
      const copied = bytes.length - from;
      this.pending.fill(0, this.pendingBytes + copied, this.pendingBytes + rest);
      this.pendingBytes += rest;
      if (this.pendingBytes === this.pending.length) await this.flush();
    }
    return hostOffset;
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    await this.writeAt(this.pending.subarray(0, this.pendingBytes), this.pendingHostOffset);
    this.pendingHostOffset += this.pendingBytes;
    this.pendingBytes = 0;
  }

  private async writeAt(buf: Buffer, position: number): Promise<void> {
    const fh = this.handle();
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
      if (bytesWritten <= 0) throw new BlockrepError('IO', `writing qcow2 image ${this.path}: write made no progress`);
      done += bytesWritten;
    }
  }

  private async finishImage(): Promise<void> {
    const cs = this.clusterSize;
    await this.switchL2(-1);

    // Every cluster before the append point is used once; add the refcount structures.
    const usedClusters = (this.pendingHostOffset + this.pendingBytes) / cs;
    const layout = refcountLayout(usedClusters, cs);
    if (layout.tableClusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
      throw new BlockrepError(
        'RESTORE_TARGET',
        `qcow2 image ${this.path} needs a refcount table larger than QEMU accepts; use a larger cluster size or --format raw`,
      );
    }
    const entriesPerBlock = cs / QCOW2_REFCOUNT_ENTRY_BYTES;
    const block = Buffer.alloc(cs);
    let blockFill = -1;
    for (let i = 0; i < layout.blocks; i++) {
      const used = Math.min(entriesPerBlock, layout.totalClusters - i * entriesPerBlock);
      if (used !== blockFill) {
        fillRefcountBlock(block, used);
        blockFill = used;
      }
      await this.appendClusters(block, 1);
    }
    const entriesPerTableCluster = cs / 8;
    for (let c = 0; c < layout.tableClusters; c++) {
      block.fill(0);
      const first = c * entriesPerTableCluster;
      const count = Math.min(entriesPerTableCluster, layout.blocks - first);
      for (let j = 0; j < count; j++) block.writeBigUInt64BE(BigInt((usedClusters + first + j) * cs), j * 8);
      await this.appendClusters(block, 1);
    }
    await this.flush();
    const fileBytes = this.pendingHostOffset;
    if (fileBytes !== layout.totalClusters * cs) {
      throw new BlockrepError('INTERNAL', `qcow2 writer layout mismatch: file ${fileBytes} bytes, expected ${layout.totalClusters * cs}`);
    }

    const fh = this.handle();
    if (this.l1.length > 0) await this.writeAt(this.l1, cs);
    await fh.sync();

    // The header (and its magic) goes last, once everything it points at is durable.
    block.fill(0);
    encodeQcow2Header(
      {
        clusterBits: Math.log2(cs),
        virtualSize: this.imageVirtualSize,
        l1Size: this.l1Size,
        l1TableOffset: cs,
        refcountTableOffset: (usedClusters + layout.blocks) * cs,
        refcountTableClusters: layout.tableClusters,
      },
      block,
      0,
    );
    if (QCOW2_HEADER_BYTES > cs) throw new BlockrepError('INTERNAL', 'qcow2 header larger than a cluster');
    await this.writeAt(block, 0);
    const stat = await fh.stat();
    if (stat.size !== fileBytes) {
      throw new BlockrepError('IO', `writing qcow2 image ${this.path}: file is ${stat.size} bytes, expected ${fileBytes}`);
    }
    await fh.sync();
    this.fh = undefined;
    await fh.close();

    await rename(this.tmpPath, this.path);
    try {
      await syncDirectory(dirname(this.path));
    } catch (err) {
      // The rename may not be durable: do not leave a file that claims to be complete.
      await unlink(this.path).catch(() => undefined);
      throw err;
    }
  }
}

function roundUpToSector(bytes: number): number {
  return Math.ceil(bytes / 512) * 512;
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
