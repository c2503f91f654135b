import {
  NBD_INIT_MAGIC,
  NBD_MAX_STRING_BYTES,
  NBD_OLDSTYLE_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  nbdBytes,
  nbdHandshakeFlag,
  nbdInfo,
} from './nbd-constants.js';
import { decodeNbdString, encodeNbdString, nbdProtocolError, readSafeU64, requireBytes } from './nbd-protocol-error.js';

/**
 * The fixed-newstyle handshake on the wire (doc/proto.md, "Handshake"): pure encoders and
 * decoders over buffers, both directions, so a server can share them. Decoders throw only
 * NBD_PROTOCOL BlockrepErrors.
 */

// ---- server greeting ----
// | 0  | 8 | 'NBDMAGIC'        |
// | 8  | 8 | 'IHAVEOPT'        | (oldstyle sends 0x00420281861253 here)
// | 16 | 2 | handshake flags   |

export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.alloc(nbdBytes.greeting);
  buf.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

export function decodeServerGreeting(buf: Buffer): { handshakeFlags: number } {
  requireBytes(buf, nbdBytes.greeting, 'the server greeting');
  if (buf.readBigUInt64BE(0) !== NBD_INIT_MAGIC) throw nbdProtocolError('the server greeting does not start with NBDMAGIC (is this an NBD server?)');
  const second = buf.readBigUInt64BE(8);
  if (second === NBD_OLDSTYLE_MAGIC) throw nbdProtocolError('the server speaks the oldstyle handshake, which blockrep does not support');
  if (second !== NBD_OPTS_MAGIC) throw nbdProtocolError(`the server greeting has magic 0x${second.toString(16)} where IHAVEOPT belongs`);
  const handshakeFlags = buf.readUInt16BE(16);
  if ((handshakeFlags & nbdHandshakeFlag.fixedNewstyle) === 0) throw nbdProtocolError('the server does not offer the fixed-newstyle handshake');
  return { handshakeFlags };
}

// ---- client flags: | 0 | 4 | client flags | ----

export function encodeClientFlags(clientFlags: number): Buffer {
  const buf = Buffer.alloc(nbdBytes.clientFlags);
  buf.writeUInt32BE(clientFlags >>> 0, 0);
  return buf;
}

export function decodeClientFlags(buf: Buffer): number {
  requireBytes(buf, nbdBytes.clientFlags, 'the client flags');
  return buf.readUInt32BE(0);
}

// ---- option request ----
// | 0  | 8 | 'IHAVEOPT'   |
// | 8  | 4 | option       |
// | 12 | 4 | data length  |
// | 16 | n | data         |

export function encodeOption(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(nbdBytes.optionHeader + data.byteLength);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.byteLength, 12);
  buf.set(data, nbdBytes.optionHeader);
  return buf;
}

export function decodeOptionHeader(buf: Buffer): { option: number; length: number } {
  requireBytes(buf, nbdBytes.optionHeader, 'an option header');
  if (buf.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw nbdProtocolError('an option does not start with IHAVEOPT');
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

// ---- option reply header ----
// | 0  | 8 | 0x3e889045565a9 |
// | 8  | 4 | option          | (the option this answers)
// | 12 | 4 | reply type      | (bit 31: error)
// | 16 | 4 | data length     |

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReply(option: number, type: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(nbdBytes.optionReplyHeader + data.byteLength);
  buf.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type >>> 0, 12);
  buf.writeUInt32BE(data.byteLength, 16);
  buf.set(data, nbdBytes.optionReplyHeader);
  return buf;
}

export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  requireBytes(buf, nbdBytes.optionReplyHeader, 'an option reply header');
  const magic = buf.readBigUInt64BE(0);
  if (magic !== NBD_OPTION_REPLY_MAGIC) throw nbdProtocolError(`an option reply has magic 0x${magic.toString(16)}`);
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

// ---- NBD_OPT_GO / NBD_OPT_INFO data ----
// | 0     | 4     | name length n |
// | 4     | n     | export name   |
// | 4+n   | 2     | count k       |
// | 6+n   | 2*k   | info types    |

export function encodeGoData(exportName: string, infoRequests: readonly number[]): Buffer {
  const name = encodeNbdString(exportName, 'the export name');
  const buf = Buffer.alloc(4 + name.byteLength + 2 + 2 * infoRequests.length);
  buf.writeUInt32BE(name.byteLength, 0);
  name.copy(buf, 4);
  buf.writeUInt16BE(infoRequests.length, 4 + name.byteLength);
  infoRequests.forEach((info, i) => buf.writeUInt16BE(info, 6 + name.byteLength + 2 * i));
  return buf;
}

export function decodeGoData(buf: Buffer): { exportName: string; infoRequests: number[] } {
  requireBytes(buf, 6, 'NBD_OPT_GO data');
  const nameBytes = buf.readUInt32BE(0);
  if (nameBytes > buf.byteLength - 6) throw nbdProtocolError('NBD_OPT_GO names more export-name bytes than it carries');
  const exportName = decodeNbdString(buf.subarray(4, 4 + nameBytes), 'the export name');
  const count = buf.readUInt16BE(4 + nameBytes);
  if (buf.byteLength !== 6 + nameBytes + 2 * count) throw nbdProtocolError('NBD_OPT_GO data length does not match its information requests');
  const infoRequests: number[] = [];
  for (let i = 0; i < count; i++) infoRequests.push(buf.readUInt16BE(6 + nameBytes + 2 * i));
  return { exportName, infoRequests };
}

// ---- NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data ----
// | 0   | 4 | name length n  |
// | 4   | n | export name    |
// | 4+n | 4 | query count k  |
// then k times: | 4 | query length q | q | query |

export function encodeMetaContextData(exportName: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const name = encodeNbdString(exportName, 'the export name');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(name.byteLength, 0);
  parts.push(head, name);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const q = encodeNbdString(query, 'a metadata context query');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(q.byteLength, 0);
    parts.push(len, q);
  }
  return Buffer.concat(parts);
}

export function decodeMetaContextData(buf: Buffer): { exportName: string; queries: string[] } {
  requireBytes(buf, 8, 'metadata context option data');
  const nameBytes = buf.readUInt32BE(0);
  if (nameBytes > buf.byteLength - 8) throw nbdProtocolError('a metadata context option names more export-name bytes than it carries');
  const exportName = decodeNbdString(buf.subarray(4, 4 + nameBytes), 'the export name');
  let at = 4 + nameBytes;
  const count = buf.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (buf.byteLength - at < 4) throw nbdProtocolError('a metadata context option ends inside its queries');
    const q = buf.readUInt32BE(at);
    at += 4;
    if (q > buf.byteLength - at) throw nbdProtocolError('a metadata context query runs past the option data');
    queries.push(decodeNbdString(buf.subarray(at, at + q), 'a metadata context query'));
    at += q;
  }
  if (at !== buf.byteLength) throw nbdProtocolError('a metadata context option has bytes after its queries');
  return { exportName, queries };
}

// ---- NBD_REP_INFO data ----
// | 0 | 2 | info type |
// NBD_INFO_EXPORT (length 12):     | 2 | 8 | export size | 10 | 2 | transmission flags |
// NBD_INFO_BLOCK_SIZE (length 14): | 2 | 4 | minimum | 6 | 4 | preferred | 10 | 4 | maximum payload |
// NBD_INFO_NAME, NBD_INFO_DESCRIPTION: | 2 | n | string |

export type InfoReply =
  | { type: 'export'; exportBytes: number; transmissionFlags: number }
  | { type: 'blockSize'; minimumBytes: number; preferredBytes: number; maximumPayloadBytes: number }
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | { type: 'unknown'; infoType: number };

export function encodeInfoExport(exportBytes: number, transmissionFlags: number): Buffer {
  const buf = Buffer.alloc(12);
  buf.writeUInt16BE(nbdInfo.export, 0);
  buf.writeBigUInt64BE(BigInt(exportBytes), 2);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

export function encodeInfoBlockSize(minimumBytes: number, preferredBytes: number, maximumPayloadBytes: number): Buffer {
  const buf = Buffer.alloc(14);
  buf.writeUInt16BE(nbdInfo.blockSize, 0);
  buf.writeUInt32BE(minimumBytes, 2);
  buf.writeUInt32BE(preferredBytes, 6);
  buf.writeUInt32BE(maximumPayloadBytes, 10);
  return buf;
}

export function decodeInfoReply(buf: Buffer): InfoReply {
  requireBytes(buf, 2, 'an NBD_REP_INFO reply');
  const infoType = buf.readUInt16BE(0);
  switch (infoType) {
    case nbdInfo.export:
      if (buf.byteLength !== 12) throw nbdProtocolError(`NBD_INFO_EXPORT has length ${buf.byteLength}, not 12`);
      return { type: 'export', exportBytes: readSafeU64(buf, 2, 'the export size'), transmissionFlags: buf.readUInt16BE(10) };
    case nbdInfo.blockSize:
      if (buf.byteLength !== 14) throw nbdProtocolError(`NBD_INFO_BLOCK_SIZE has length ${buf.byteLength}, not 14`);
      return { type: 'blockSize', minimumBytes: buf.readUInt32BE(2), preferredBytes: buf.readUInt32BE(6), maximumPayloadBytes: buf.readUInt32BE(10) };
    case nbdInfo.name:
      return { type: 'name', name: decodeNbdString(buf.subarray(2), 'NBD_INFO_NAME') };
    case nbdInfo.description:
      return { type: 'description', description: decodeNbdString(buf.subarray(2), 'NBD_INFO_DESCRIPTION') };
    default:
      return { type: 'unknown', infoType };
  }
}

// ---- NBD_REP_META_CONTEXT data ----
// | 0 | 4 | context id |
// | 4 | n | context name |

export function encodeMetaContextReply(contextId: number, name: string): Buffer {
  const nameBytes = encodeNbdString(name, 'a metadata context name');
  const buf = Buffer.alloc(4 + nameBytes.byteLength);
  buf.writeUInt32BE(contextId >>> 0, 0);
  nameBytes.copy(buf, 4);
  return buf;
}

export function decodeMetaContextReply(buf: Buffer): { contextId: number; name: string } {
  requireBytes(buf, 5, 'an NBD_REP_META_CONTEXT reply');
  return { contextId: buf.readUInt32BE(0), name: decodeNbdString(buf.subarray(4), 'a metadata context name') };
}

// ---- NBD_REP_SERVER data (NBD_OPT_LIST) ----
// | 0 | 4 | name length n | 4 | n | export name | 4+n | rest | description |

export function decodeServerReply(buf: Buffer): { exportName: string; description: string } {
  requireBytes(buf, 4, 'an NBD_REP_SERVER reply');
  const nameBytes = buf.readUInt32BE(0);
  if (nameBytes > buf.byteLength - 4) throw nbdProtocolError('NBD_REP_SERVER names more bytes than it carries');
  return {
    exportName: decodeNbdString(buf.subarray(4, 4 + nameBytes), 'an export name'),
    description: decodeNbdString(buf.subarray(4 + nameBytes), 'an export description'),
  };
}

// ---- the reply to NBD_OPT_EXPORT_NAME (no option reply header) ----
// | 0  | 8   | export size        |
// | 8  | 2   | transmission flags |
// | 10 | 124 | zeroes             | (absent when both sides set NO_ZEROES)

export function encodeExportNameReply(exportBytes: number, transmissionFlags: number, zeroes: boolean): Buffer {
  const buf = Buffer.alloc(nbdBytes.exportNameReply + (zeroes ? nbdBytes.exportNameZeroes : 0));
  buf.writeBigUInt64BE(BigInt(exportBytes), 0);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

export function decodeExportNameReply(buf: Buffer): { exportBytes: number; transmissionFlags: number } {
  requireBytes(buf, nbdBytes.exportNameReply, 'the NBD_OPT_EXPORT_NAME reply');
  return { exportBytes: readSafeU64(buf, 0, 'the export size'), transmissionFlags: buf.readUInt16BE(8) };
}

/** Option replies larger than this are refused: the biggest legitimate one carries two strings. */
export const MAX_OPTION_REPLY_BYTES = 4 + 2 * NBD_MAX_STRING_BYTES + 64;
