import { BlockrepError } from '../shared/index.js';
import { QCOW2_MAGIC, QCOW2_MAX_CLUSTER_BITS, QCOW2_MAX_L1_BYTES, QCOW2_MIN_CLUSTER_BITS } from './qcow2-limits.js';

/**
 * The qcow2 header and its extensions (QEMU docs/interop/qcow2.txt, "Header" and "Header
 * extensions"). All fields are big-endian. decodeQcow2Header() also refuses every image that
 * blockrep must not read: encrypted, with an external data file, marked corrupt, or using an
 * incompatible feature this reader does not implement.
 *
 * | offset | size | field                    | notes                                  |
 * |--------|------|--------------------------|----------------------------------------|
 * | 0      | 4    | magic "QFI\xfb"          |                                        |
 * | 4      | 4    | version                  | 2 or 3                                 |
 * | 8      | 8    | backing_file_offset      | 0: no backing file                     |
 * | 16     | 4    | backing_file_size        | at most 1023                           |
 * | 20     | 4    | cluster_bits             | 9..21                                  |
 * | 24     | 8    | size                     | virtual size in bytes                  |
 * | 32     | 4    | crypt_method             | 0 none, 1 AES, 2 LUKS                  |
 * | 36     | 4    | l1_size                  | L1 entries                             |
 * | 40     | 8    | l1_table_offset          |                                        |
 * | 48     | 8    | refcount_table_offset    |                                        |
 * | 56     | 4    | refcount_table_clusters  |                                        |
 * | 60     | 4    | nb_snapshots             |                                        |
 * | 64     | 8    | snapshots_offset         | v2 header ends at 72                   |
 * | 72     | 8    | incompatible_features    | v3                                     |
 * | 80     | 8    | compatible_features      | v3                                     |
 * | 88     | 8    | autoclear_features       | v3                                     |
 * | 96     | 4    | refcount_order           | v3                                     |
 * | 100    | 4    | header_length            | v3, >= 104, multiple of 8              |
 * | 104    | 1    | compression_type         | v3 when header_length > 104            |
 */

export const QCOW2_V2_HEADER_BYTES = 72;
export const QCOW2_V3_MIN_HEADER_BYTES = 104;
/** Extended L2 entries need at least 16 KiB clusters (32 subclusters of 512 bytes). */
export const QCOW2_MIN_EXTENDED_L2_CLUSTER_BITS = 14;
export const QCOW2_MAX_BACKING_NAME_BYTES = 1023;
export const QCOW2_MAX_L1_ENTRIES = QCOW2_MAX_L1_BYTES / 8;
/** QEMU stores the backing format in a 16-byte buffer including its terminator. */
const MAX_BACKING_FORMAT_BYTES = 15;
const FEATURE_NAME_ENTRY_BYTES = 48;
const FEATURE_NAME_BYTES = 46;

export const qcow2HeaderExtension = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureNames: 0x6803f857,
  bitmaps: 0x23852875,
  encryption: 0x0537be77,
  externalDataFile: 0x44415441,
} as const;

/** Incompatible feature bits (header offset 72). */
export const qcow2IncompatibleBit = {
  dirty: 0,
  corrupt: 1,
  externalDataFile: 2,
  compressionType: 3,
  extendedL2: 4,
} as const;

/** Incompatible bits this reader knows how to handle (or refuses by name on purpose). */
const KNOWN_INCOMPATIBLE_MASK = 0b11111n;

const defaultIncompatibleNames: Record<number, string> = {
  0: 'dirty bit',
  1: 'corrupt bit',
  2: 'external data file',
  3: 'compression type',
  4: 'extended L2 entries',
};

export type Qcow2CompressionType = 'zlib' | 'zstd';

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: Qcow2CompressionType;
  extendedL2: boolean;
  /** Refcounts may be stale; harmless for reading. */
  dirty: boolean;
  /** The backing file name exactly as stored (relative to the image's directory, or absolute). */
  backingFile: string | undefined;
  /** From the backing format extension, e.g. "raw" or "qcow2". */
  backingFormat: string | undefined;
  /** Feature name table: "incompatible:5" → name. */
  featureNames: Map<string, string>;
  /** L2 entries per L2 table (one cluster): clusterSize / 8, or / 16 with extended L2. */
  l2Entries: number;
  /** L1 entries that cover the virtual size (≤ l1Size); the reader loads only these. */
  l1EntriesUsed: number;
}

/**
 * How many bytes from the start of the file decodeQcow2Header() needs: the whole first
 * cluster, where the header, its extensions and the backing file name live. Needs 24 bytes.
 */
export function qcow2HeaderAreaBytes(first: Uint8Array): number {
  if (first.byteLength < 24) return QCOW2_V3_MIN_HEADER_BYTES;
  const clusterBits = view(first).getUint32(20); // cluster_bits @20
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS || clusterBits > QCOW2_MAX_CLUSTER_BITS) return QCOW2_V3_MIN_HEADER_BYTES;
  return 2 ** clusterBits;
}

/**
 * Decodes the header from `buf`, the first qcow2HeaderAreaBytes() of the file (or the whole
 * file if it is shorter). `path` only names the image in errors.
 */
export function decodeQcow2Header(buf: Uint8Array, path: string): Qcow2Header {
  const fail = (code: 'IMAGE_CORRUPT' | 'IMAGE_UNSUPPORTED', problem: string): BlockrepError =>
    new BlockrepError(code, `${path}: ${problem}`, { details: { path } });

  if (buf.byteLength < QCOW2_V2_HEADER_BYTES) {
    throw fail('IMAGE_CORRUPT', `file too short for a qcow2 header (${buf.byteLength} bytes, need ${QCOW2_V2_HEADER_BYTES}); the image is truncated`);
  }
  const dv = view(buf);
  const u64 = (offset: number, field: string): number => {
    const value = dv.getBigUint64(offset);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw fail('IMAGE_CORRUPT', `qcow2 header field ${field} (offset ${offset}) is ${value}, beyond any real image`);
    }
    return Number(value);
  };

  const magic = dv.getUint32(0); // magic @0
  if (magic !== QCOW2_MAGIC) throw fail('IMAGE_CORRUPT', `not a qcow2 image (bad magic 0x${magic.toString(16).padStart(8, '0')})`);
  const version = dv.getUint32(4); // version @4
  if (version !== 2 && version !== 3) {
    throw fail('IMAGE_UNSUPPORTED', `qcow2 version ${version} is not supported (only versions 2 and 3)`);
  }
  const clusterBits = dv.getUint32(20); // cluster_bits @20
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS) {
    throw fail('IMAGE_CORRUPT', `qcow2 cluster_bits ${clusterBits} is below the minimum of ${QCOW2_MIN_CLUSTER_BITS}`);
  }
  if (clusterBits > QCOW2_MAX_CLUSTER_BITS) {
    throw fail('IMAGE_UNSUPPORTED', `qcow2 cluster size 2^${clusterBits} bytes is above the 2 MiB that QEMU and blockrep support`);
  }
  const clusterSize = 2 ** clusterBits;

  const backingFileOffset = u64(8, 'backing_file_offset'); // backing_file_offset @8
  const backingFileSize = dv.getUint32(16); // backing_file_size @16
  const virtualSize = u64(24, 'size'); // size @24
  const cryptMethod = dv.getUint32(32); // crypt_method @32
  const l1Size = dv.getUint32(36); // l1_size @36
  const l1TableOffset = u64(40, 'l1_table_offset'); // l1_table_offset @40
  const refcountTableOffset = u64(48, 'refcount_table_offset'); // refcount_table_offset @48
  const refcountTableClusters = dv.getUint32(56); // refcount_table_clusters @56
  const nbSnapshots = dv.getUint32(60); // nb_snapshots @60
  const snapshotsOffset = u64(64, 'snapshots_offset'); // snapshots_offset @64

  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4; // v2 images always use 16-bit refcounts
  let headerLength = QCOW2_V2_HEADER_BYTES;
  let compressionTypeValue = 0;
  if (version === 3) {
    if (buf.byteLength < QCOW2_V3_MIN_HEADER_BYTES) {
      throw fail('IMAGE_CORRUPT', `file too short for a qcow2 v3 header (${buf.byteLength} bytes); the image is truncated`);
    }
    incompatibleFeatures = dv.getBigUint64(72); // incompatible_features @72
    compatibleFeatures = dv.getBigUint64(80); // compatible_features @80
    autoclearFeatures = dv.getBigUint64(88); // autoclear_features @88
    refcountOrder = dv.getUint32(96); // refcount_order @96
    headerLength = dv.getUint32(100); // header_length @100
    if (headerLength < QCOW2_V3_MIN_HEADER_BYTES || headerLength % 8 !== 0 || headerLength > clusterSize) {
      throw fail('IMAGE_CORRUPT', `qcow2 header_length ${headerLength} is invalid (must be a multiple of 8 from 104 to the cluster size)`);
    }
    if (buf.byteLength < headerLength) {
      throw fail('IMAGE_CORRUPT', `file too short for its ${headerLength}-byte qcow2 header; the image is truncated`);
    }
    if (headerLength > 104) compressionTypeValue = buf[104] ?? 0; // compression_type @104
  }
  if (refcountOrder > 6) throw fail('IMAGE_CORRUPT', `qcow2 refcount_order ${refcountOrder} is above the maximum of 6`);

  // Backing file name: QEMU requires it inside the first cluster, which also ends the
  // extension area.
  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize > QCOW2_MAX_BACKING_NAME_BYTES || backingFileOffset + backingFileSize > clusterSize) {
      throw fail('IMAGE_CORRUPT', `qcow2 backing file name (${backingFileSize} bytes at offset ${backingFileOffset}) does not fit in the first cluster or is over ${QCOW2_MAX_BACKING_NAME_BYTES} bytes`);
    }
    if (backingFileOffset < headerLength) {
      throw fail('IMAGE_CORRUPT', `qcow2 backing file name offset ${backingFileOffset} overlaps the header`);
    }
    if (backingFileOffset + backingFileSize > buf.byteLength) {
      throw fail('IMAGE_CORRUPT', 'file ends inside the qcow2 backing file name; the image is truncated');
    }
    if (backingFileSize > 0) {
      backingFile = Buffer.from(buf.buffer, buf.byteOffset + backingFileOffset, backingFileSize).toString('utf8');
    }
  }

  // Header extensions: from the end of the header to the backing file name (or the end of
  // the first cluster), each `u32 type, u32 length, data padded to 8`, type 0 ends them.
  const extensionsEnd = backingFileOffset !== 0 ? backingFileOffset : clusterSize;
  let backingFormat: string | undefined;
  const featureNames = new Map<string, string>();
  let hasEncryptionExtension = false;
  let externalDataFile: string | undefined;
  for (let off = headerLength; off + 8 <= extensionsEnd; ) {
    if (off + 8 > buf.byteLength) {
      throw fail('IMAGE_CORRUPT', `file ends inside the qcow2 header extensions (offset ${off}); the image is truncated`);
    }
    const type = dv.getUint32(off); // extension type @+0
    const length = dv.getUint32(off + 4); // extension length @+4
    if (type === qcow2HeaderExtension.end) break;
    const dataStart = off + 8;
    if (length > extensionsEnd - dataStart) {
      throw fail('IMAGE_CORRUPT', `qcow2 header extension 0x${type.toString(16).padStart(8, '0')} at offset ${off} (${length} bytes) overruns the header area`);
    }
    if (dataStart + length > buf.byteLength) {
      throw fail('IMAGE_CORRUPT', `file ends inside qcow2 header extension 0x${type.toString(16)}; the image is truncated`);
    }
    const data = buf.subarray(dataStart, dataStart + length);
    switch (type) {
      case qcow2HeaderExtension.backingFormat:
        if (length > MAX_BACKING_FORMAT_BYTES) {
          throw fail('IMAGE_CORRUPT', `qcow2 backing format name is ${length} bytes long (at most ${MAX_BACKING_FORMAT_BYTES})`);
        }
        backingFormat = text(data);
        break;
      case qcow2HeaderExtension.featureNames:
        for (let e = 0; e + FEATURE_NAME_ENTRY_BYTES <= length; e += FEATURE_NAME_ENTRY_BYTES) {
          const kind = ['incompatible', 'compatible', 'autoclear'][data[e] ?? 255]; // type @+0
          const bit = data[e + 1] ?? 0; // bit number @+1
          const name = text(data.subarray(e + 2, e + 2 + FEATURE_NAME_BYTES)); // name @+2, NUL-padded
          if (kind !== undefined) featureNames.set(`${kind}:${bit}`, name);
        }
        break;
      case qcow2HeaderExtension.encryption:
        hasEncryptionExtension = true;
        break;
      case qcow2HeaderExtension.externalDataFile:
        externalDataFile = text(data);
        break;
      default:
        // Bitmaps and unknown extensions do not change what the guest reads.
        break;
    }
    off = dataStart + Math.ceil(length / 8) * 8;
  }

  // Refusals, most telling first.
  if (cryptMethod !== 0 || hasEncryptionExtension) {
    const how = cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : `crypt_method ${cryptMethod}`;
    throw fail('IMAGE_UNSUPPORTED', `qcow2 image is encrypted (${how}); blockrep does not read encrypted images`);
  }
  const bit = (n: number): boolean => (incompatibleFeatures & (1n << BigInt(n))) !== 0n;
  if (bit(qcow2IncompatibleBit.corrupt)) {
    throw fail('IMAGE_CORRUPT', "qcow2 image is marked corrupt (incompatible feature 'corrupt bit'); repair it with `qemu-img check -r all` first");
  }
  if (bit(qcow2IncompatibleBit.externalDataFile) || externalDataFile !== undefined) {
    const name = externalDataFile === undefined ? '' : ` '${externalDataFile}'`;
    throw fail('IMAGE_UNSUPPORTED', `qcow2 image keeps its data in an external data file${name}; blockrep does not read external data files`);
  }
  const unknown = incompatibleFeatures & ~KNOWN_INCOMPATIBLE_MASK;
  if (unknown !== 0n) {
    const names: string[] = [];
    for (let n = 0; n < 64; n++) {
      if ((unknown & (1n << BigInt(n))) === 0n) continue;
      const name = featureNames.get(`incompatible:${n}`);
      names.push(name === undefined ? `bit ${n}` : `'${name}' (bit ${n})`);
    }
    throw fail('IMAGE_UNSUPPORTED', `qcow2 image uses unknown incompatible feature ${names.join(', ')}; blockrep cannot read it`);
  }
  let compressionType: Qcow2CompressionType;
  if (compressionTypeValue === 0) compressionType = 'zlib';
  else if (compressionTypeValue === 1) compressionType = 'zstd';
  else throw fail('IMAGE_UNSUPPORTED', `qcow2 compression type ${compressionTypeValue} is unknown (known: 0 zlib, 1 zstd)`);
  if (bit(qcow2IncompatibleBit.compressionType) !== (compressionTypeValue !== 0)) {
    throw fail('IMAGE_CORRUPT', `qcow2 compression type ${compressionType} does not match the 'compression type' feature bit`);
  }
  const extendedL2 = bit(qcow2IncompatibleBit.extendedL2);
  if (extendedL2 && clusterBits < QCOW2_MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw fail('IMAGE_CORRUPT', `qcow2 extended L2 entries need clusters of at least 16 KiB, not ${clusterSize} bytes`);
  }

  // L1 geometry: it must cover the virtual size, and must not make us allocate much.
  const l2Entries = clusterSize / (extendedL2 ? 16 : 8);
  const l1EntriesUsed = Math.ceil(virtualSize / (clusterSize * l2Entries));
  if (l1Size > QCOW2_MAX_L1_ENTRIES) {
    throw fail('IMAGE_UNSUPPORTED', `qcow2 L1 table has ${l1Size} entries, above QEMU's limit of ${QCOW2_MAX_L1_ENTRIES} (32 MiB)`);
  }
  if (l1Size < l1EntriesUsed) {
    throw fail('IMAGE_CORRUPT', `qcow2 L1 table (${l1Size} entries) is too small for the virtual size ${virtualSize} (needs ${l1EntriesUsed})`);
  }
  if (l1EntriesUsed > 0 && (l1TableOffset === 0 || l1TableOffset % clusterSize !== 0)) {
    throw fail('IMAGE_CORRUPT', `qcow2 L1 table offset ${l1TableOffset} is not aligned to the ${clusterSize}-byte cluster size`);
  }

  return {
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    clusterSize,
    virtualSize,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    extendedL2,
    dirty: bit(qcow2IncompatibleBit.dirty),
    backingFile,
    backingFormat,
    featureNames,
    l2Entries,
    l1EntriesUsed,
  };
}

/** A human name for an incompatible feature bit (for messages and `info` output). */
export function qcow2IncompatibleFeatureName(header: Pick<Qcow2Header, 'featureNames'>, bitNumber: number): string {
  return header.featureNames.get(`incompatible:${bitNumber}`) ?? defaultIncompatibleNames[bitNumber] ?? `bit ${bitNumber}`;
}

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** A stored string: not NUL-terminated, but NUL padding (feature names) ends it. */
function text(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return Buffer.from(bytes.buffer, bytes.byteOffset, nul < 0 ? bytes.byteLength : nul).toString('utf8');
}
