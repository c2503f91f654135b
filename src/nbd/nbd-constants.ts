/**
 * The NBD protocol's numbers (the NBD project's doc/proto.md, "Values"), shared by the client
 * and any server in this folder. All fields on the wire are big-endian.
 */

/** 'NBDMAGIC': the first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': the newstyle greeting's second magic, and the magic of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** The second magic of an oldstyle greeting, which blockrep does not speak. */
export const NBD_OLDSTYLE_MAGIC = 0x00420281861253n;
/** Magic of every fixed-newstyle option reply. */
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, 16 bits). */
export const nbdHandshakeFlag = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;
/** Client flags (32 bits). */
export const nbdClientFlag = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;

/** Transmission flags (16 bits, in NBD_INFO_EXPORT or the EXPORT_NAME reply). */
export const nbdTransmissionFlag = {
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  sendDf: 1 << 7,
  canMultiConn: 1 << 8,
  sendResize: 1 << 9,
  sendCache: 1 << 10,
  sendFastZero: 1 << 11,
} as const;

export const nbdOption = {
  exportName: 1,
  abort: 2,
  list: 3,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
  listMetaContext: 9,
  setMetaContext: 10,
} as const;

/** Option reply types; errors have bit 31 set. */
export const nbdOptionReply = {
  ack: 1,
  server: 2,
  info: 3,
  metaContext: 4,
  errUnsup: 0x80000001,
  errPolicy: 0x80000002,
  errInvalid: 0x80000003,
  errPlatform: 0x80000004,
  errTlsReqd: 0x80000005,
  errUnknown: 0x80000006,
  errShutdown: 0x80000007,
  errBlockSizeReqd: 0x80000008,
  errTooBig: 0x80000009,
} as const;
export const NBD_OPTION_REPLY_ERROR_BIT = 0x80000000;

const optionReplyErrorNames: Record<number, string> = {
  [nbdOptionReply.errUnsup]: 'NBD_REP_ERR_UNSUP',
  [nbdOptionReply.errPolicy]: 'NBD_REP_ERR_POLICY',
  [nbdOptionReply.errInvalid]: 'NBD_REP_ERR_INVALID',
  [nbdOptionReply.errPlatform]: 'NBD_REP_ERR_PLATFORM',
  [nbdOptionReply.errTlsReqd]: 'NBD_REP_ERR_TLS_REQD',
  [nbdOptionReply.errUnknown]: 'NBD_REP_ERR_UNKNOWN',
  [nbdOptionReply.errShutdown]: 'NBD_REP_ERR_SHUTDOWN',
  [nbdOptionReply.errBlockSizeReqd]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [nbdOptionReply.errTooBig]: 'NBD_REP_ERR_TOO_BIG',
};

export function nbdOptionReplyErrorName(type: number): string {
  return optionReplyErrorNames[type] ?? `NBD_REP_ERR 0x${type.toString(16)}`;
}

/** NBD_REP_INFO information types. */
export const nbdInfo = { export: 0, name: 1, description: 2, blockSize: 3 } as const;

export const nbdCommand = { read: 0, write: 1, disc: 2, flush: 3, trim: 4, cache: 5, writeZeroes: 6, blockStatus: 7 } as const;

export const nbdCommandFlag = { fua: 1 << 0, noHole: 1 << 1, df: 1 << 2, reqOne: 1 << 3, fastZero: 1 << 4 } as const;

/** Structured reply chunk flags. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;

/** Structured reply chunk types; error chunks have bit 15 set. */
export const nbdReplyType = { none: 0, offsetData: 1, offsetHole: 2, blockStatus: 5, error: 0x8001, errorOffset: 0x8002 } as const;
export const NBD_REPLY_TYPE_ERROR_BIT = 0x8000;

/** Error values of replies (they happen to match Linux errno values). */
export const nbdErrno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

const errnoNames: Record<number, string> = Object.fromEntries(Object.entries(nbdErrno).map(([name, value]) => [value, name]));

/** NBD_EIO → 'EIO'; a value the protocol does not define is shown as a number. */
export function nbdErrnoName(value: number): string {
  return errnoNames[value] ?? `error ${value}`;
}

/** `base:allocation` flags. */
export const nbdStateAllocation = { hole: 1 << 0, zero: 1 << 1 } as const;
/** `qemu:dirty-bitmap:NAME` flags. */
export const nbdStateDirty = 1 << 0;

export const BASE_ALLOCATION = 'base:allocation';
export const QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

// Limits.
/** Strings (export names, context names, error messages) MUST be no longer than this. */
export const NBD_MAX_STRING_BYTES = 4096;
/**
 * Default size constraints when the server advertises none: a server SHOULD accept 32 MiB
 * payloads; any minimum block size works, 4 KiB is preferred.
 */
export const NBD_DEFAULT_MIN_BLOCK = 1;
export const NBD_DEFAULT_PREFERRED_BLOCK = 4096;
export const NBD_DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
/** A minimum block size MUST be a power of two and at most 64 KiB. */
export const NBD_MAX_MIN_BLOCK = 64 * 1024;
/** Servers SHOULD NOT send more than 2^20 extents in one block-status chunk. */
export const NBD_MAX_EXTENTS_PER_CHUNK = 1 << 20;
/** Request lengths are 32-bit. */
export const NBD_MAX_REQUEST_LENGTH = 0xffffffff;

/** Fixed sizes of the messages, in bytes. */
export const nbdBytes = {
  greeting: 18,
  clientFlags: 4,
  optionHeader: 16,
  optionReplyHeader: 20,
  exportNameReply: 10,
  exportNameZeroes: 124,
  request: 28,
  simpleReply: 16,
  structuredReplyHeader: 20,
} as const;
