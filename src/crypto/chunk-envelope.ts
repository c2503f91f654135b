import { openSealed, SEAL_OVERHEAD, sealInto } from './object-seal.js';

/**
 * A chunk of an encrypted repository: the chunk blob (chunk-codec: header, zstd or stored
 * bytes) sealed whole, with the chunk id as associated data, so a chunk stored under another
 * chunk's name (two files swapped, one replayed) does not open.
 *
 * | offset | size | field                                            |
 * |--------|------|--------------------------------------------------|
 * | 0      | 4    | magic "BRCE"                                     |
 * | 4      | 1    | envelope version (1)                             |
 * | 5      | 3    | reserved, 0                                      |
 * | 8      | 24   | nonce (object-seal.ts)                           |
 * | 32     | n    | AES-256-GCM ciphertext of the chunk blob         |
 * | 32 + n | 16   | GCM tag                                          |
 *
 * Associated data: the first 8 bytes, then the 32 bytes of the chunk id.
 */
export const CHUNK_ENVELOPE_MAGIC = 0x42524345; // "BRCE"
export const CHUNK_ENVELOPE_VERSION = 1;
const PREFIX_BYTES = 8;
/** Bytes an envelope adds to the blob it seals. */
export const CHUNK_ENVELOPE_OVERHEAD = PREFIX_BYTES + SEAL_OVERHEAD;

function prefix(): Buffer {
  const p = Buffer.alloc(PREFIX_BYTES);
  p.writeUInt32BE(CHUNK_ENVELOPE_MAGIC, 0);
  p.writeUInt8(CHUNK_ENVELOPE_VERSION, 4);
  return p;
}

function aadFor(head: Buffer, chunkId: string): Buffer {
  return Buffer.concat([head, Buffer.from(chunkId, 'hex')]);
}

export function sealChunkBlob(sealKey: Uint8Array, chunkId: string, blob: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(CHUNK_ENVELOPE_OVERHEAD + blob.byteLength);
  const head = prefix();
  head.copy(out, 0);
  sealInto(sealKey, blob, aadFor(head, chunkId), out, PREFIX_BYTES);
  return out;
}

/** What is wrong with the form of an envelope (checkable without the key), or undefined. */
export function chunkEnvelopeProblem(envelope: Uint8Array, maxBlobBytes: number): string | undefined {
  const buf = Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength);
  if (buf.length < PREFIX_BYTES || buf.readUInt32BE(0) !== CHUNK_ENVELOPE_MAGIC) return 'not a sealed chunk (bad magic)';
  if (buf.readUInt8(4) !== CHUNK_ENVELOPE_VERSION) return `unknown envelope version ${buf.readUInt8(4)}`;
  if (buf.readUIntBE(5, 3) !== 0) return 'reserved bytes are not zero';
  if (buf.length <= CHUNK_ENVELOPE_OVERHEAD) return `${buf.length} bytes, too short to hold a sealed blob`;
  if (buf.length - CHUNK_ENVELOPE_OVERHEAD > maxBlobBytes) return `${buf.length} bytes, larger than a sealed block may be`;
  return undefined;
}

/** The chunk blob, or undefined when the envelope does not open with this key for this id. */
export function openChunkBlob(sealKey: Uint8Array, chunkId: string, envelope: Uint8Array): Buffer | undefined {
  const buf = Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength);
  if (chunkEnvelopeProblem(buf, Number.MAX_SAFE_INTEGER) !== undefined) return undefined;
  return openSealed(sealKey, buf.subarray(PREFIX_BYTES), aadFor(buf.subarray(0, PREFIX_BYTES), chunkId));
}
