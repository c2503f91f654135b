import {
  NBD_MAX_EXTENTS_PER_CHUNK,
  NBD_MAX_STRING_BYTES,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  nbdBytes,
  nbdReplyType,
} from './nbd-constants.js';
import { decodeNbdMessage, nbdProtocolError, readSafeU64, requireBytes } from './nbd-protocol-error.js';

/**
 * The transmission phase on the wire (doc/proto.md, "Transmission"): requests, simple replies,
 * structured reply chunks and their payloads. Pure encoders and decoders over buffers, both
 * directions; decoders throw only NBD_PROTOCOL BlockrepErrors. Cookies (once called handles)
 * are opaque 64-bit values, kept as bigint.
 */

// ---- request ----
// | 0  | 4 | 0x25609513 |
// | 4  | 2 | command flags |
// | 6  | 2 | type          |
// | 8  | 8 | cookie        |
// | 16 | 8 | offset        |
// | 24 | 4 | length        |
// (then length bytes of data for NBD_CMD_WRITE)

export interface NbdRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

export function encodeRequest(request: NbdRequest): Buffer {
  const buf = Buffer.alloc(nbdBytes.request);
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  buf.writeUInt16BE(request.flags, 4);
  buf.writeUInt16BE(request.type, 6);
  buf.writeBigUInt64BE(request.cookie, 8);
  buf.writeBigUInt64BE(BigInt(request.offset), 16);
  buf.writeUInt32BE(request.length, 24);
  return buf;
}

export function decodeRequest(buf: Buffer): NbdRequest {
  requireBytes(buf, nbdBytes.request, 'a request');
  const magic = buf.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) throw nbdProtocolError(`a request has magic 0x${magic.toString(16)}`);
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.readBigUInt64BE(8),
    offset: readSafeU64(buf, 16, 'a request offset'),
    length: buf.readUInt32BE(24),
  };
}

// ---- replies: the first 4 bytes say which kind ----

/** The whole header's size for a reply starting with this magic (16 simple, 20 structured). */
export function replyHeaderBytes(first4: Buffer): number {
  requireBytes(first4, 4, 'a reply magic');
  const magic = first4.readUInt32BE(0);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return nbdBytes.simpleReply;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return nbdBytes.structuredReplyHeader;
  throw nbdProtocolError(`a reply has magic 0x${magic.toString(16).padStart(8, '0')}`);
}

// ---- simple reply ----
// | 0 | 4 | 0x67446698 |
// | 4 | 4 | error      |
// | 8 | 8 | cookie     |
// (then the data of a successful NBD_CMD_READ)

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const buf = Buffer.alloc(nbdBytes.simpleReply);
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  buf.writeBigUInt64BE(cookie, 8);
  return buf;
}

export function decodeSimpleReply(buf: Buffer): { error: number; cookie: bigint } {
  requireBytes(buf, nbdBytes.simpleReply, 'a simple reply');
  if (buf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw nbdProtocolError('a simple reply has the wrong magic');
  return { error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
}

// ---- structured reply chunk header ----
// | 0  | 4 | 0x668e33ef |
// | 4  | 2 | flags      | (bit 0: NBD_REPLY_FLAG_DONE)
// | 6  | 2 | type       |
// | 8  | 8 | cookie     |
// | 16 | 4 | payload length |

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeChunkHeader(header: ChunkHeader): Buffer {
  const buf = Buffer.alloc(nbdBytes.structuredReplyHeader);
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(header.flags, 4);
  buf.writeUInt16BE(header.type, 6);
  buf.writeBigUInt64BE(header.cookie, 8);
  buf.writeUInt32BE(header.length, 16);
  return buf;
}

export function decodeChunkHeader(buf: Buffer): ChunkHeader {
  requireBytes(buf, nbdBytes.structuredReplyHeader, 'a structured reply header');
  if (buf.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC) throw nbdProtocolError('a structured reply has the wrong magic');
  return { flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), length: buf.readUInt32BE(16) };
}

/** A whole chunk: header and payload. */
export function encodeChunk(flags: number, type: number, cookie: bigint, payload: Uint8Array): Buffer {
  return Buffer.concat([encodeChunkHeader({ flags, type, cookie, length: payload.byteLength }), payload]);
}

// ---- NBD_REPLY_TYPE_OFFSET_DATA payload ----
// | 0 | 8     | offset |
// | 8 | len-8 | data   | (at least 1 byte)

export function encodeOffsetDataPayload(offset: number, data: Uint8Array): Buffer {
  const buf = Buffer.alloc(8 + data.byteLength);
  buf.writeBigUInt64BE(BigInt(offset), 0);
  buf.set(data, 8);
  return buf;
}

/** The data chunk's offset (its first 8 bytes) and how many data bytes follow. */
export function decodeOffsetDataPrefix(first8: Buffer, chunkLength: number): { offset: number; dataBytes: number } {
  if (chunkLength < 9) throw nbdProtocolError(`an OFFSET_DATA chunk has length ${chunkLength}, under 9`);
  requireBytes(first8, 8, 'an OFFSET_DATA chunk');
  return { offset: readSafeU64(first8, 0, 'an OFFSET_DATA offset'), dataBytes: chunkLength - 8 };
}

// ---- NBD_REPLY_TYPE_OFFSET_HOLE payload (length 12) ----
// | 0 | 8 | offset    |
// | 8 | 4 | hole size | (nonzero)

export function encodeOffsetHolePayload(offset: number, holeBytes: number): Buffer {
  const buf = Buffer.alloc(12);
  buf.writeBigUInt64BE(BigInt(offset), 0);
  buf.writeUInt32BE(holeBytes, 8);
  return buf;
}

export function decodeOffsetHole(payload: Buffer): { offset: number; holeBytes: number } {
  if (payload.byteLength !== 12) throw nbdProtocolError(`an OFFSET_HOLE chunk has length ${payload.byteLength}, not 12`);
  const holeBytes = payload.readUInt32BE(8);
  if (holeBytes === 0) throw nbdProtocolError('an OFFSET_HOLE chunk has size 0');
  return { offset: readSafeU64(payload, 0, 'an OFFSET_HOLE offset'), holeBytes };
}

// ---- NBD_REPLY_TYPE_BLOCK_STATUS payload (length 4 + 8*n, n >= 1) ----
// | 0 | 4 | context id |
// then n times: | 4 | extent length (nonzero) | 4 | status flags |

export interface BlockStatusChunk {
  contextId: number;
  lengths: Uint32Array;
  flags: Uint32Array;
}

export function encodeBlockStatusPayload(contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>): Buffer {
  const buf = Buffer.alloc(4 + 8 * extents.length);
  buf.writeUInt32BE(contextId, 0);
  extents.forEach((extent, i) => {
    buf.writeUInt32BE(extent.length, 4 + 8 * i);
    buf.writeUInt32BE(extent.flags >>> 0, 8 + 8 * i);
  });
  return buf;
}

/** Largest BLOCK_STATUS payload accepted (2^20 extents, the spec's bound). */
export const MAX_BLOCK_STATUS_PAYLOAD_BYTES = 4 + 8 * NBD_MAX_EXTENTS_PER_CHUNK;

export function decodeBlockStatus(payload: Buffer): BlockStatusChunk {
  const length = payload.byteLength;
  if (length < 12 || (length - 4) % 8 !== 0) throw nbdProtocolError(`a BLOCK_STATUS chunk has length ${length}, not 4 + a positive multiple of 8`);
  if (length > MAX_BLOCK_STATUS_PAYLOAD_BYTES) throw nbdProtocolError(`a BLOCK_STATUS chunk carries ${(length - 4) / 8} extents, over the limit of ${NBD_MAX_EXTENTS_PER_CHUNK}`);
  const count = (length - 4) / 8;
  const lengths = new Uint32Array(count);
  const flags = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    const extentBytes = payload.readUInt32BE(4 + 8 * i);
    if (extentBytes === 0) throw nbdProtocolError(`extent ${i} of a BLOCK_STATUS chunk has length 0`);
    lengths[i] = extentBytes;
    flags[i] = payload.readUInt32BE(8 + 8 * i);
  }
  return { contextId: payload.readUInt32BE(0), lengths, flags };
}

// ---- error chunks (type bit 15 set) ----
// | 0 | 4 | error (nonzero)       |
// | 4 | 2 | message length m      |
// | 6 | m | message               |
// NBD_REPLY_TYPE_ERROR_OFFSET adds: | 6+m | 8 | offset |
// Unknown error types: the same first fields, unknown trailing fields.

export interface ErrorChunk {
  error: number;
  message: string;
  /** NBD_REPLY_TYPE_ERROR_OFFSET only. */
  offset?: number;
}

/** Error chunks are small: a message of at most 4096 bytes and a few fixed fields. */
export const MAX_ERROR_PAYLOAD_BYTES = 6 + NBD_MAX_STRING_BYTES + 8 + 64;

export function encodeErrorPayload(error: number, message: string, offset?: number): Buffer {
  const text = Buffer.from(message, 'utf8').subarray(0, NBD_MAX_STRING_BYTES);
  const buf = Buffer.alloc(6 + text.byteLength + (offset === undefined ? 0 : 8));
  buf.writeUInt32BE(error, 0);
  buf.writeUInt16BE(text.byteLength, 4);
  text.copy(buf, 6);
  if (offset !== undefined) buf.writeBigUInt64BE(BigInt(offset), 6 + text.byteLength);
  return buf;
}

export function isErrorChunkType(type: number): boolean {
  return (type & NBD_REPLY_TYPE_ERROR_BIT) !== 0;
}

export function decodeErrorChunk(type: number, payload: Buffer): ErrorChunk {
  if (!isErrorChunkType(type)) throw nbdProtocolError(`chunk type ${type} is not an error chunk`);
  requireBytes(payload, 6, 'an error chunk');
  const error = payload.readUInt32BE(0);
  if (error === 0) throw nbdProtocolError('an error chunk carries error 0');
  const messageBytes = payload.readUInt16BE(4);
  if (messageBytes > NBD_MAX_STRING_BYTES) throw nbdProtocolError(`an error message of ${messageBytes} bytes is over the ${NBD_MAX_STRING_BYTES}-byte limit`);
  if (6 + messageBytes > payload.byteLength) throw nbdProtocolError('an error chunk message runs past the chunk');
  const message = decodeNbdMessage(payload.subarray(6, 6 + messageBytes));
  if (type === nbdReplyType.errorOffset) {
    if (payload.byteLength !== 6 + messageBytes + 8) throw nbdProtocolError('an ERROR_OFFSET chunk does not end with exactly its offset');
    return { error, message, offset: readSafeU64(payload, 6 + messageBytes, 'an ERROR_OFFSET offset') };
  }
  if (type === nbdReplyType.error && payload.byteLength !== 6 + messageBytes) throw nbdProtocolError('an ERROR chunk has bytes after its message');
  return { error, message };
}
