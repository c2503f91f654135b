import { BlockrepError } from '../shared/index.js';
import type { ImageFile } from './image-file.js';
import type { Extent, ImageFormat, ImageReader } from './image-reader.js';
import { Qcow2ClusterMap, type Qcow2Run } from './qcow2-cluster-map.js';
import { createQcow2Decompressor, type Qcow2Decompressor } from './qcow2-decompressor.js';
import { decodeQcow2Header, qcow2HeaderAreaBytes, type Qcow2Header } from './qcow2-header.js';
import { checkExtentsRange, checkReadRange, pushExtent, pushExtents } from './reader-ranges.js';

/** Reads of separate host ranges in flight at once within one read() (fragmented images). */
const MAX_READS_IN_FLIGHT = 8;
/** Compressed-input buffers kept for reuse. */
const MAX_SPARE_SCRATCH = 4;
const HEADER_PROBE_BYTES = 4096;

/**
 * A qcow2 image (v2 and v3): L1/L2 mapping, zero clusters, compressed clusters (zlib and
 * zstd), extended L2 entries with subclusters, and a backing image for what this file does
 * not hold. Unallocated ranges beyond the end of a shorter backing image read as zeros.
 *
 * read() serves each run of the mapping with one positioned read straight into the caller's
 * buffer (host-contiguous clusters coalesce), one fill, one backing read, or one
 * decompression. extents() answers from the L1/L2 tables (and the host file's holes) alone,
 * never reading guest data.
 * Concurrent calls are safe.
 */
export class Qcow2Reader implements ImageReader {
  readonly format: ImageFormat = 'qcow2';
  readonly virtualSize: number;
  private readonly decompressor: Qcow2Decompressor;
  private readonly scratch: Buffer[] = [];
  /** Last decompressed cluster: sequential reads smaller than a cluster hit it repeatedly. */
  private cachedCompressedHost = -1;
  private cachedCluster: Uint8Array | null = null;
  private closed = false;

  private constructor(
    private readonly file: ImageFile,
    readonly header: Qcow2Header,
    private readonly map: Qcow2ClusterMap,
    /** Reads of unallocated ranges go here; null: they read as zeros. */
    readonly backing: ImageReader | null,
  ) {
    this.virtualSize = header.virtualSize;
    this.decompressor = createQcow2Decompressor(header.compressionType, header.clusterSize);
  }

  get path(): string {
    return this.file.path;
  }

  /** Reads and decodes the header of an open qcow2 file (refusing what blockrep cannot read). */
  static async readHeader(file: ImageFile): Promise<Qcow2Header> {
    let buf = Buffer.alloc(Math.min(HEADER_PROBE_BYTES, file.fileBytes));
    let have = await file.readUpTo(buf, 0, buf.byteLength, 0);
    const want = Math.min(qcow2HeaderAreaBytes(buf.subarray(0, have)), file.fileBytes);
    if (want > have) {
      const more = Buffer.alloc(want);
      more.set(buf.subarray(0, have));
      have += await file.readUpTo(more, have, want - have, have);
      buf = more;
    }
    return decodeQcow2Header(buf.subarray(0, have), file.path);
  }

  /**
   * Builds a reader over an open file whose header is already decoded. Takes ownership of
   * `file` and `backing` (close() closes both) only when it succeeds.
   */
  static async fromFile(file: ImageFile, header: Qcow2Header, backing: ImageReader | null): Promise<Qcow2Reader> {
    if (header.backingFile !== undefined && backing === null) {
      throw new BlockrepError('INTERNAL', `${file.path} has backing file '${header.backingFile}' but no backing reader was given`);
    }
    const map = await Qcow2ClusterMap.load(file, header);
    return new Qcow2Reader(file, header, map, backing);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkReadRange(this, buf, offset);
    const end = offset + buf.byteLength;
    const pending: Promise<void>[] = [];
    try {
      for (let pos = offset; pos < end; ) {
        const run = this.map.peekRun(pos, end - pos) ?? (await this.map.run(pos, end - pos));
        const at = pos - offset;
        switch (run.kind) {
          case 'zero':
            buf.fill(0, at, at + run.length);
            break;
          case 'data':
            pending.push(this.readData(buf, at, run, pos));
            break;
          case 'unallocated':
            if (this.backing === null || pos >= this.backing.virtualSize) buf.fill(0, at, at + run.length);
            else pending.push(this.readBacking(buf, at, run.length, pos));
            break;
          case 'compressed':
            await this.readCompressed(buf, at, run, pos);
            break;
        }
        if (pending.length >= MAX_READS_IN_FLIGHT) {
          await Promise.all(pending);
          pending.length = 0;
        }
        pos += run.length;
      }
      await Promise.all(pending);
    } catch (err) {
      // Let every read still writing into `buf` finish before the caller sees the error.
      await Promise.allSettled(pending);
      throw err;
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkExtentsRange(this, offset, length);
    const out: Extent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const run = this.map.peekRun(pos, end - pos) ?? (await this.map.run(pos, end - pos));
      if (run.kind === 'unallocated') {
        const inBacking = this.backing === null ? 0 : Math.max(0, Math.min(run.length, this.backing.virtualSize - pos));
        if (inBacking > 0 && this.backing !== null) pushExtents(out, await this.backing.extents(pos, inBacking));
        pushExtent(out, pos + inBacking, run.length - inBacking, 'zero');
      } else if (run.kind === 'data') {
        // Clusters allocated but never written (preallocation=metadata) are holes in the
        // host file: report them zero, as QEMU's block status does. Past the end of the file
        // stays data, for read() to report.
        const inFile = Math.max(0, Math.min(run.length, this.file.fileBytes - run.hostOffset));
        const shift = pos - run.hostOffset;
        this.file.mapHoles(run.hostOffset, run.hostOffset + inFile, (host, bytes, kind) => pushExtent(out, host + shift, bytes, kind));
        pushExtent(out, pos + inFile, run.length - inFile, 'data');
      } else {
        pushExtent(out, pos, run.length, run.kind === 'zero' ? 'zero' : 'data');
      }
      pos += run.length;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.file.close();
    } finally {
      await this.backing?.close();
    }
  }

  private async readData(buf: Uint8Array, at: number, run: Qcow2Run, guestOffset: number): Promise<void> {
    const n = await this.file.readUpTo(buf, at, run.length, run.hostOffset);
    if (n !== run.length) {
      throw this.file.pastEnd(`data for guest offset ${guestOffset + n}`, run.hostOffset + n, run.length - n);
    }
  }

  /** The part inside the backing image comes from it; beyond its end (a shorter backing file) reads as zeros. */
  private async readBacking(buf: Uint8Array, at: number, length: number, guestOffset: number): Promise<void> {
    const backing = this.backing;
    const inBacking = backing === null ? 0 : Math.max(0, Math.min(length, backing.virtualSize - guestOffset));
    if (inBacking < length) buf.fill(0, at + inBacking, at + length);
    if (backing !== null && inBacking > 0) await backing.read(buf.subarray(at, at + inBacking), guestOffset);
  }

  private async readCompressed(buf: Uint8Array, at: number, run: Qcow2Run, guestOffset: number): Promise<void> {
    const clusterSize = this.header.clusterSize;
    const within = guestOffset % clusterSize;
    let cluster = this.cachedCompressedHost === run.hostOffset ? this.cachedCluster : null;
    if (cluster === null) {
      // The last compressed cluster may end before its last recorded sector: QEMU does not
      // pad the file, and reads past the end as zeros. Read what exists.
      const stored = Math.min(run.compressedBytes, this.file.fileBytes - run.hostOffset);
      const input = this.scratch.pop() ?? Buffer.allocUnsafeSlow(2 * clusterSize);
      try {
        const n = await this.file.readUpTo(input, 0, stored, run.hostOffset);
        try {
          cluster = this.decompressor.decompress(input.subarray(0, n));
        } catch (err) {
          const why = err instanceof Error ? err.message : String(err);
          throw new BlockrepError(
            'IMAGE_CORRUPT',
            `${this.path}: compressed cluster for guest offset ${guestOffset - within} (host offset ${run.hostOffset}, ${this.header.compressionType}) does not decompress: ${why}`,
            { cause: err, details: { path: this.path } },
          );
        }
        // Synchronous from here on: no other call can touch the decompressor's buffer
        // before we have copied out of it.
        this.cachedCompressedHost = run.hostOffset;
        this.cachedCluster = cluster;
      } finally {
        if (this.scratch.length < MAX_SPARE_SCRATCH) this.scratch.push(input);
      }
    }
    buf.set(cluster.subarray(within, within + run.length), at);
  }
}
