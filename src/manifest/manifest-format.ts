import { isValidBlockSize, BlockrepError } from '../shared/index.js';
import { z } from 'zod';

/**
 * The manifest of one version of one disk: which content each block had.
 *
 * | offset | size | field                                                   |
 * |--------|------|---------------------------------------------------------|
 * | 0      | 4    | magic "BRMF"                                            |
 * | 4      | 2    | format version (MANIFEST_FORMAT_VERSION)                |
 * | 6      | 1    | block hash algorithm (1 = xxHash64, seed 0)             |
 * | 7      | 1    | reserved, 0                                             |
 * | 8      | 4    | header bytes H (multiple of 8)                          |
 * | 12     | 4    | block size                                              |
 * | 16     | 8    | image bytes                                             |
 * | 24     | 8    | block count = ceil(image bytes / block size)            |
 * | 32     | 8    | created, ms since the epoch                             |
 * | 40     | 8    | changed blocks (against the parent)                     |
 * | 48     | 8    | zero blocks                                             |
 * | 56     | 8    | bytes of new chunks this version stored                 |
 * | 64     | 4    | meta length L                                           |
 * | 68     | L    | meta: UTF-8 JSON (disk id, version id, parent, source)  |
 * | H      | 40·n | entries: xxHash64 (u64) + chunk id (32 bytes, all zero = zero block) |
 * | H+40n  | 32   | SHA-256 of every byte before it                         |
 *
 * All integers big-endian.
 */
export const MANIFEST_MAGIC = 0x42524d46; // "BRMF"
export const MANIFEST_FORMAT_VERSION = 1;
export const HASH_XXH64 = 1;
export const FIXED_HEADER_BYTES = 68;
export const ENTRY_BYTES = 40;
export const DIGEST_BYTES = 32;
const MAX_META_BYTES = 64 * 1024;
export const sourceFactsSchema = z
  .object({
    kind: z.enum(['image', 'live']),
    path: z.string().max(4096).optional(),
    format: z.enum(['raw', 'qcow2']).optional(),
    vm: z.string().max(256).optional(),
  })
  .strict();

/**
 * Where changed-block tracking stood when a live version was taken: the next run may read only
 * what the tracker calls dirty if, and only if, its tracker counts writes since exactly this
 * point (same method, chain and point). Absent: the next run reads everything.
 */
export const trackingFactsSchema = z
  .object({
    /** qemu-bitmap: blockrep's own dirty bitmaps over QMP; libvirt-checkpoint: libvirt's checkpoints. */
    method: z.enum(['qemu-bitmap', 'libvirt-checkpoint']),
    /** Names one line of points: derived from the repository, the disk (and the domain's uuid). */
    chain: z.string().min(1).max(128),
    /** The bitmap or checkpoint that counts writes since this version. */
    point: z.string().min(1).max(256),
    /** Bytes of disk one bit of the tracker covers. */
    granularity: z.number().int().positive().optional(),
    /** false: the tracker lives only as long as the hypervisor process (a raw disk's bitmap). */
    persistent: z.boolean().optional(),
    /** When this chain last read the whole disk (ms since the epoch): a bound on what a bug could miss. */
    fullScanMs: z.number().int().nonnegative(),
  })
  .strict();

export type TrackingFacts = z.infer<typeof trackingFactsSchema>;

export const manifestMetaSchema = z
  .object({
    diskId: z.string().min(1).max(200),
    versionId: z.string().min(1).max(64),
    parentVersionId: z.string().max(64).nullable(),
    source: sourceFactsSchema,
    /** How the blocks were found: all read, or only those the tracker called dirty (live only). */
    scan: z.enum(['full', 'bitmap']).optional(),
    tracking: trackingFactsSchema.optional(),
  })
  .strict();

export type ManifestMeta = z.infer<typeof manifestMetaSchema>;

export interface ManifestHeader {
  formatVersion: number;
  hashAlgorithm: number;
  headerBytes: number;
  blockSize: number;
  imageBytes: number;
  blockCount: number;
  createdMs: number;
  changedBlocks: number;
  zeroBlocks: number;
  storedBytes: number;
  meta: ManifestMeta;
}

export function blockCountFor(imageBytes: number, blockSize: number): number {
  return Math.ceil(imageBytes / blockSize);
}

export function manifestBytes(header: Pick<ManifestHeader, 'headerBytes' | 'blockCount'>): number {
  return header.headerBytes + header.blockCount * ENTRY_BYTES + DIGEST_BYTES;
}

export function headerBytesFor(meta: ManifestMeta): number {
  const metaLength = Buffer.byteLength(JSON.stringify(meta), 'utf8');
  return Math.ceil((FIXED_HEADER_BYTES + metaLength) / 8) * 8;
}

export function encodeHeader(h: Omit<ManifestHeader, 'formatVersion' | 'hashAlgorithm' | 'headerBytes'>): Buffer {
  const meta = Buffer.from(JSON.stringify(h.meta), 'utf8');
  if (meta.length > MAX_META_BYTES) throw new BlockrepError('INTERNAL', 'manifest meta too large');
  const headerBytes = Math.ceil((FIXED_HEADER_BYTES + meta.length) / 8) * 8;
  const buf = Buffer.alloc(headerBytes);
  buf.writeUInt32BE(MANIFEST_MAGIC, 0);
  buf.writeUInt16BE(MANIFEST_FORMAT_VERSION, 4);
  buf.writeUInt8(HASH_XXH64, 6);
  buf.writeUInt32BE(headerBytes, 8);
  buf.writeUInt32BE(h.blockSize, 12);
  buf.writeBigUInt64BE(BigInt(h.imageBytes), 16);
  buf.writeBigUInt64BE(BigInt(h.blockCount), 24);
  buf.writeBigUInt64BE(BigInt(h.createdMs), 32);
  buf.writeBigUInt64BE(BigInt(h.changedBlocks), 40);
  buf.writeBigUInt64BE(BigInt(h.zeroBlocks), 48);
  buf.writeBigUInt64BE(BigInt(h.storedBytes), 56);
  buf.writeUInt32BE(meta.length, 64);
  meta.copy(buf, 68);
  return buf;
}

function safeU64(buf: Buffer, offset: number, what: string, where: string): number {
  const v = buf.readBigUInt64BE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockrepError('REPO_CORRUPT', `${where}: ${what} out of range`);
  return Number(v);
}

/** How many bytes decodeHeader needs, from the first 12 bytes (after the magic/version check). */
export function peekHeaderBytes(buf: Buffer, where: string): number {
  checkMagicAndVersion(buf, where);
  const headerBytes = buf.readUInt32BE(8);
  if (headerBytes < FIXED_HEADER_BYTES || headerBytes > FIXED_HEADER_BYTES + MAX_META_BYTES + 8 || headerBytes % 8 !== 0) {
    throw new BlockrepError('REPO_CORRUPT', `${where}: implausible header length ${headerBytes}`);
  }
  return headerBytes;
}

function checkMagicAndVersion(buf: Buffer, where: string): void {
  if (buf.length < 12 || buf.readUInt32BE(0) !== MANIFEST_MAGIC) {
    throw new BlockrepError('REPO_CORRUPT', `${where}: not a blockrep manifest (bad magic)`);
  }
  const version = buf.readUInt16BE(4);
  if (version !== MANIFEST_FORMAT_VERSION) {
    throw new BlockrepError(
      'REPO_FORMAT',
      `${where}: manifest format version ${version}, but this blockrep reads version ${MANIFEST_FORMAT_VERSION}; ` +
        (version < MANIFEST_FORMAT_VERSION ? 'it was written by an older blockrep' : 'use a newer blockrep'),
    );
  }
}

export function decodeHeader(buf: Buffer, where: string): ManifestHeader {
  const headerBytes = peekHeaderBytes(buf, where);
  if (buf.length < headerBytes) throw new BlockrepError('REPO_CORRUPT', `${where}: truncated header`);
  const hashAlgorithm = buf.readUInt8(6);
  if (hashAlgorithm !== HASH_XXH64) throw new BlockrepError('REPO_FORMAT', `${where}: unknown block hash algorithm ${hashAlgorithm}`);
  const blockSize = buf.readUInt32BE(12);
  const imageBytes = safeU64(buf, 16, 'image size', where);
  const blockCount = safeU64(buf, 24, 'block count', where);
  if (!isValidBlockSize(blockSize)) throw new BlockrepError('REPO_CORRUPT', `${where}: invalid block size ${blockSize}`);
  if (blockCount !== blockCountFor(imageBytes, blockSize)) throw new BlockrepError('REPO_CORRUPT', `${where}: block count does not match the image size`);
  const metaLength = buf.readUInt32BE(64);
  if (FIXED_HEADER_BYTES + metaLength > headerBytes) throw new BlockrepError('REPO_CORRUPT', `${where}: meta overruns the header`);
  let meta: ManifestMeta;
  try {
    meta = manifestMetaSchema.parse(JSON.parse(buf.toString('utf8', 68, 68 + metaLength)));
  } catch (err) {
    throw new BlockrepError('REPO_CORRUPT', `${where}: unreadable manifest meta`, { cause: err });
  }
  return {
    formatVersion: MANIFEST_FORMAT_VERSION,
    hashAlgorithm,
    headerBytes,
    blockSize,
    imageBytes,
    blockCount,
    createdMs: safeU64(buf, 32, 'creation time', where),
    changedBlocks: safeU64(buf, 40, 'changed blocks', where),
    zeroBlocks: safeU64(buf, 48, 'zero blocks', where),
    storedBytes: safeU64(buf, 56, 'stored bytes', where),
    meta,
  };
}
