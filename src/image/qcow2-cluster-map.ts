import { endianness } from 'node:os';
import { BlockrepError } from '../shared/index.js';
import type { ImageFile } from './image-file.js';
import type { Qcow2Header } from './qcow2-header.js';
import { Qcow2L2Cache } from './qcow2-l2-cache.js';

/**
 * Guest-offset → host-offset mapping of a qcow2 image (qcow2.txt "Cluster mapping" and
 * "Extended L2 Entries"). It answers in runs: the longest stretch from a guest offset whose
 * (sub)clusters share one kind, and for data also lie back to back in the host file, so the
 * reader can serve a whole run with one read or one fill. Nothing here reads guest data.
 *
 * Every host offset is checked against the file before it is handed out: misaligned or
 * past-the-end entries are IMAGE_CORRUPT errors naming the guest offset and the table.
 */
export type Qcow2RunKind =
  /** Stored in this file at `hostOffset`. */
  | 'data'
  /** Reads as zeros (zero flag, or zero subclusters). */
  | 'zero'
  /** Not in this file: read the backing image, or zeros without one. */
  | 'unallocated'
  /** One compressed cluster: `compressedBytes` at `hostOffset`. */
  | 'compressed';

export interface Qcow2Run {
  kind: Qcow2RunKind;
  /** Bytes from the requested guest offset (never more than asked). */
  length: number;
  /** data: host offset of the requested guest offset; compressed: start of the compressed data. */
  hostOffset: number;
  /** compressed: stored bytes, rounded up to 512-byte sectors as the entry records them. */
  compressedBytes: number;
}

/** Total L2 cache per reader: a few MiB at most, whatever the cluster size. */
export const L2_CACHE_BYTES = 4 * 1024 * 1024;

const TWO_POW_32 = 2 ** 32;
const SUBCLUSTERS = 32;
const LITTLE_ENDIAN = endianness() === 'LE';

export class Qcow2ClusterMap {
  private readonly clusterSize: number;
  private readonly l2Entries: number;
  /** Guest bytes one L2 table (one L1 entry) maps. */
  private readonly l1Coverage: number;
  /** Mapping granularity: the cluster, or the subcluster with extended L2. */
  private readonly unit: number;
  private readonly extended: boolean;
  /** Compressed descriptor: host offset bits 0..x-1, sector count bits x..61. */
  private readonly compressedShiftHigh: number;
  private readonly compressedSectorMask: number;
  private readonly cache: Qcow2L2Cache;
  // Results of classify(), kept in fields so the hot path allocates nothing.
  private classHost = 0;
  private classCompressedBytes = 0;

  private constructor(
    private readonly file: ImageFile,
    header: Qcow2Header,
    /** Host offset of each L1 entry's L2 table; 0 = unallocated. */
    private readonly l1: Float64Array,
  ) {
    this.clusterSize = header.clusterSize;
    this.l2Entries = header.l2Entries;
    this.l1Coverage = header.clusterSize * header.l2Entries;
    this.extended = header.extendedL2;
    this.unit = this.extended ? header.clusterSize / SUBCLUSTERS : header.clusterSize;
    const x = 62 - (header.clusterBits - 8);
    this.compressedShiftHigh = x - 32;
    this.compressedSectorMask = 2 ** (header.clusterBits - 8) - 1;
    this.cache = new Qcow2L2Cache(
      (offset) => this.loadL2(offset),
      Math.max(1, Math.floor(L2_CACHE_BYTES / header.clusterSize)),
    );
  }

  /** Reads and checks the part of the L1 table that covers the virtual size. */
  static async load(file: ImageFile, header: Qcow2Header): Promise<Qcow2ClusterMap> {
    const entries = header.l1EntriesUsed;
    const bytes = entries * 8;
    // Checked before allocating, so a corrupt l1_size cannot make us allocate more than the
    // file holds (the header already capped it at QEMU's 32 MiB).
    if (header.l1TableOffset + bytes > file.fileBytes) throw file.pastEnd('L1 table', header.l1TableOffset, bytes);
    const raw = Buffer.allocUnsafe(bytes);
    await file.readExact(raw, 0, bytes, header.l1TableOffset, 'L1 table');
    const l1 = new Float64Array(entries);
    for (let i = 0; i < entries; i++) {
      const hi = raw.readUInt32BE(i * 8);
      const lo = raw.readUInt32BE(i * 8 + 4);
      // L1 entry: bits 9-55 are the L2 table offset; bit 63 (copied) and reserved bits ignored.
      const offset = (hi & 0x00ffffff) * TWO_POW_32 + ((lo & 0xfffffe00) >>> 0);
      if (offset === 0) continue;
      const guest = i * header.clusterSize * header.l2Entries;
      if (offset % header.clusterSize !== 0) {
        throw corrupt(file, `L1 entry ${i} (guest offset ${guest}) points to an L2 table at misaligned host offset ${offset}`);
      }
      if (offset + header.clusterSize > file.fileBytes) {
        throw corrupt(file, `L1 entry ${i} (guest offset ${guest}) points to an L2 table at host offset ${offset}, past the end of the file (${file.fileBytes} bytes)`);
      }
      l1[i] = offset;
    }
    return new Qcow2ClusterMap(file, header, l1);
  }

  /** The run at `guestOffset` if its L2 table is cached (no await needed), else undefined. */
  peekRun(guestOffset: number, maxLength: number): Qcow2Run | undefined {
    const l1Index = Math.floor(guestOffset / this.l1Coverage);
    const l2Offset = this.l1[l1Index] ?? 0;
    if (l2Offset === 0) return this.unallocatedRun(l1Index, guestOffset, maxLength);
    const table = this.cache.peek(l2Offset);
    return table === undefined ? undefined : this.runInTable(table, l2Offset, l1Index, guestOffset, maxLength);
  }

  async run(guestOffset: number, maxLength: number): Promise<Qcow2Run> {
    const l1Index = Math.floor(guestOffset / this.l1Coverage);
    const l2Offset = this.l1[l1Index] ?? 0;
    if (l2Offset === 0) return this.unallocatedRun(l1Index, guestOffset, maxLength);
    const table = await this.cache.get(l2Offset);
    return this.runInTable(table, l2Offset, l1Index, guestOffset, maxLength);
  }

  /** A run over L1 entries without an L2 table (they may follow each other). */
  private unallocatedRun(l1Index: number, guestOffset: number, maxLength: number): Qcow2Run {
    const limit = guestOffset + maxLength;
    let end = (l1Index + 1) * this.l1Coverage;
    for (let i = l1Index + 1; end < limit && i < this.l1.length && this.l1[i] === 0; i++) end += this.l1Coverage;
    return { kind: 'unallocated', length: Math.min(end, limit) - guestOffset, hostOffset: 0, compressedBytes: 0 };
  }

  private runInTable(table: Uint32Array, l2Offset: number, l1Index: number, guestOffset: number, maxLength: number): Qcow2Run {
    const unit = this.unit;
    const limit = Math.min(guestOffset + maxLength, (l1Index + 1) * this.l1Coverage);
    const kind = this.classify(table, l2Offset, guestOffset);
    if (kind === 'compressed') {
      const clusterEnd = (Math.floor(guestOffset / this.clusterSize) + 1) * this.clusterSize;
      return {
        kind,
        length: Math.min(clusterEnd, limit) - guestOffset,
        hostOffset: this.classHost,
        compressedBytes: this.classCompressedBytes,
      };
    }
    // For data: host offset of the requested byte, and where the next unit must be to extend the run.
    const hostOffset = kind === 'data' ? this.classHost + (guestOffset % unit) : 0;
    let runEnd = (Math.floor(guestOffset / unit) + 1) * unit;
    let expectedHost = hostOffset + (runEnd - guestOffset);
    while (runEnd < limit) {
      const next = this.classify(table, l2Offset, runEnd);
      if (next !== kind || (kind === 'data' && this.classHost !== expectedHost)) break;
      runEnd += unit;
      expectedHost += unit;
    }
    return { kind, length: Math.min(runEnd, limit) - guestOffset, hostOffset, compressedBytes: 0 };
  }

  /**
   * The kind of the (sub)cluster holding `guestOffset`. For data, sets classHost to the host
   * offset of that unit's start; for compressed, classHost/classCompressedBytes.
   */
  private classify(table: Uint32Array, l2Offset: number, guestOffset: number): Qcow2RunKind {
    const clusterSize = this.clusterSize;
    const index = Math.floor(guestOffset / clusterSize) % this.l2Entries;
    const at = this.extended ? index * 4 : index * 2;
    const hi = table[at] ?? 0;
    const lo = table[at + 1] ?? 0;

    if ((hi & 0x40000000) !== 0) {
      // Compressed (bit 62): offset in bits 0..x-1, additional sectors in bits x..61.
      const shift = this.compressedShiftHigh;
      const host = (hi & ((1 << shift) - 1)) * TWO_POW_32 + lo;
      const sectors = ((hi >>> shift) & this.compressedSectorMask) + 1;
      if (host >= this.file.fileBytes) {
        throw this.entryError(guestOffset, l2Offset, `points to compressed data at host offset ${host}, past the end of the file (${this.file.fileBytes} bytes)`);
      }
      this.classHost = host;
      this.classCompressedBytes = sectors * 512 - (host % 512);
      return 'compressed';
    }

    // Standard descriptor: bits 9-55 host cluster offset; bit 0 zero flag (not with extended L2).
    const host = (hi & 0x00ffffff) * TWO_POW_32 + ((lo & 0xfffffe00) >>> 0);
    let kind: Qcow2RunKind;
    let unitHost = host;
    if (!this.extended) {
      if ((lo & 1) !== 0) return 'zero';
      if (host === 0) return 'unallocated';
      kind = 'data';
    } else {
      // Subcluster bitmap (second u64): bits 0-31 allocated (low word), 32-63 reads-as-zero.
      const sub = Math.floor((guestOffset % clusterSize) / this.unit);
      const allocated = ((table[at + 3] ?? 0) >>> sub) & 1;
      const zero = ((table[at + 2] ?? 0) >>> sub) & 1;
      if (allocated !== 0 && zero !== 0) {
        throw this.entryError(guestOffset, l2Offset, `marks subcluster ${sub} both allocated and zero`);
      }
      if (zero !== 0) return 'zero';
      if (allocated === 0) return 'unallocated';
      if (host === 0) throw this.entryError(guestOffset, l2Offset, `marks subcluster ${sub} allocated but has no host offset`);
      kind = 'data';
      unitHost = host + sub * this.unit;
    }
    if (host % clusterSize !== 0) {
      throw this.entryError(guestOffset, l2Offset, `points to misaligned host offset ${host} (clusters are ${clusterSize} bytes)`);
    }
    if (host >= this.file.fileBytes) {
      throw this.entryError(guestOffset, l2Offset, `points to host offset ${host}, past the end of the file (${this.file.fileBytes} bytes)`);
    }
    this.classHost = unitHost;
    return kind;
  }

  private entryError(guestOffset: number, l2Offset: number, problem: string): BlockrepError {
    const clusterStart = Math.floor(guestOffset / this.clusterSize) * this.clusterSize;
    return corrupt(this.file, `L2 entry for guest offset ${clusterStart} (L2 table at host offset ${l2Offset}) ${problem}`);
  }

  private async loadL2(hostOffset: number): Promise<Uint32Array> {
    const bytes = this.clusterSize;
    // allocUnsafeSlow: never a slice of Node's shared pool, so the Uint32Array view below is
    // aligned and the table does not pin unrelated memory.
    const buf = Buffer.allocUnsafeSlow(bytes);
    await this.file.readExact(buf, 0, bytes, hostOffset, 'L2 table');
    if (LITTLE_ENDIAN) buf.swap32(); // big-endian words → host order
    return new Uint32Array(buf.buffer, buf.byteOffset, bytes / 4);
  }
}

function corrupt(file: ImageFile, problem: string): BlockrepError {
  return new BlockrepError('IMAGE_CORRUPT', `${file.path}: ${problem}`, { details: { path: file.path } });
}
