/**
 * The on-disk structures the qcow2 writer produces (QEMU `docs/interop/qcow2.txt`), as pure
 * functions so they can be checked without files. All fields are big-endian.
 *
 * Header written (version 3, 112 bytes, no extensions; the rest of cluster 0 is zero, which
 * also serves as the end-of-extensions marker):
 *
 * | offset | size | field                    | value                                  |
 * |--------|------|--------------------------|----------------------------------------|
 * | 0      | 4    | magic                    | "QFI\xfb"                              |
 * | 4      | 4    | version                  | 3                                      |
 * | 8      | 8    | backing_file_offset      | 0                                      |
 * | 16     | 4    | backing_file_size        | 0                                      |
 * | 20     | 4    | cluster_bits             | log2(clusterSize)                      |
 * | 24     | 8    | size                     | virtual size                           |
 * | 32     | 4    | crypt_method             | 0                                      |
 * | 36     | 4    | l1_size                  | entries                                |
 * | 40     | 8    | l1_table_offset          | clusterSize (cluster 1)                |
 * | 48     | 8    | refcount_table_offset    | after the refcount blocks              |
 * | 56     | 4    | refcount_table_clusters  |                                        |
 * | 60     | 4    | nb_snapshots             | 0                                      |
 * | 64     | 8    | snapshots_offset         | 0                                      |
 * | 72     | 8    | incompatible_features    | 0                                      |
 * | 80     | 8    | compatible_features      | 0                                      |
 * | 88     | 8    | autoclear_features       | 0                                      |
 * | 96     | 4    | refcount_order           | 4 (16-bit refcounts)                   |
 * | 100    | 4    | header_length            | 112                                    |
 * | 104    | 1    | compression_type         | 0 (zlib; no compressed clusters)       |
 * | 105    | 7    | padding                  | 0                                      |
 */
import { BlockrepError } from '../shared/index.js';
import { QCOW2_MAGIC, QCOW2_OFLAG_COPIED } from './qcow2-limits.js';


export const QCOW2_VERSION = 3;
export const QCOW2_HEADER_BYTES = 112;
export const QCOW2_REFCOUNT_ORDER = 4;
export const QCOW2_REFCOUNT_ENTRY_BYTES = 2; // 1 << refcount_order bits
/** QEMU refuses larger refcount tables (QCOW_MAX_REFTABLE_SIZE). */
export const QCOW2_MAX_REFTABLE_BYTES = 8 * 1024 * 1024;

export interface Qcow2HeaderFields {
  clusterBits: number;
  virtualSize: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
}

/** Encodes the header into `buf` at `off`; `buf` must hold QCOW2_HEADER_BYTES from `off`. */
export function encodeQcow2Header(h: Qcow2HeaderFields, buf: Buffer, off = 0): void {
  if (buf.length - off < QCOW2_HEADER_BYTES) {
    throw new BlockrepError('INTERNAL', `qcow2 header needs ${QCOW2_HEADER_BYTES} bytes, buffer has ${buf.length - off}`);
  }
  buf.fill(0, off, off + QCOW2_HEADER_BYTES);
  buf.writeUInt32BE(QCOW2_MAGIC, off + 0);
  buf.writeUInt32BE(QCOW2_VERSION, off + 4);
  // 8 backing_file_offset, 16 backing_file_size: 0
  buf.writeUInt32BE(h.clusterBits, off + 20);
  buf.writeBigUInt64BE(BigInt(h.virtualSize), off + 24);
  // 32 crypt_method: 0
  buf.writeUInt32BE(h.l1Size, off + 36);
  buf.writeBigUInt64BE(BigInt(h.l1TableOffset), off + 40);
  buf.writeBigUInt64BE(BigInt(h.refcountTableOffset), off + 48);
  buf.writeUInt32BE(h.refcountTableClusters, off + 56);
  // 60 nb_snapshots, 64 snapshots_offset, 72/80/88 feature bitmaps: 0
  buf.writeUInt32BE(QCOW2_REFCOUNT_ORDER, off + 96);
  buf.writeUInt32BE(QCOW2_HEADER_BYTES, off + 100);
  // 104 compression_type 0 (zlib), 105..111 padding
}

/** Encodes an L1 or L2 entry pointing at `hostOffset` for a cluster whose refcount is one. */
export function encodeTableEntry(hostOffset: number, buf: Buffer, off: number): void {
  buf.writeBigUInt64BE(BigInt(hostOffset) | QCOW2_OFLAG_COPIED, off);
}

/** Number of L1 entries needed to map `virtualSize` bytes. */
export function l1EntriesFor(virtualSize: number, clusterSize: number): number {
  const bytesPerL2 = clusterSize * (clusterSize / 8);
  return Math.ceil(virtualSize / bytesPerL2);
}

export interface RefcountLayout {
  /** Refcount blocks, placed at clusters [firstCluster, firstCluster + blocks). */
  blocks: number;
  /** Refcount table clusters, placed right after the blocks. */
  tableClusters: number;
  /** Clusters in the whole file once the refcount structures are appended. */
  totalClusters: number;
}

/**
 * Sizes the refcount structures for a file whose clusters [0, usedClusters) are all in use
 * (refcount 1) and which gets its refcount blocks and table appended at the end: they must
 * also count themselves, so this iterates to the fixed point (it converges in a few steps
 * because each block covers clusterSize/2 clusters).
 */
export function refcountLayout(usedClusters: number, clusterSize: number): RefcountLayout {
  const entriesPerBlock = clusterSize / QCOW2_REFCOUNT_ENTRY_BYTES;
  const entriesPerTableCluster = clusterSize / 8;
  let blocks = 0;
  let tableClusters = 0;
  for (;;) {
    const total = usedClusters + blocks + tableClusters;
    const needBlocks = Math.ceil(total / entriesPerBlock);
    const needTable = Math.ceil(needBlocks / entriesPerTableCluster);
    if (needBlocks === blocks && needTable === tableClusters) {
      return { blocks, tableClusters, totalClusters: total };
    }
    // Sizes only grow, so this terminates.
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
}

/** Fills `buf` (one refcount block) with refcount 1 for its first `usedEntries` entries, 0 after. */
export function fillRefcountBlock(buf: Buffer, usedEntries: number): void {
  buf.fill(0);
  for (let i = 0; i < usedEntries; i++) buf.writeUInt16BE(1, i * QCOW2_REFCOUNT_ENTRY_BYTES);
}
