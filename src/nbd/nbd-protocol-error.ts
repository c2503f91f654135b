import { BlockrepError } from '../shared/index.js';
import { NBD_MAX_STRING_BYTES } from './nbd-constants.js';

/**
 * The error of a peer that broke the NBD protocol, and the checks every wire decoder makes
 * before it reads a field: enough bytes, 64-bit values within Number's safe range, strings
 * that are UTF-8, bounded and without NUL.
 */
export function nbdProtocolError(message: string, details?: Record<string, unknown>): BlockrepError {
  return new BlockrepError('NBD_PROTOCOL', `NBD protocol violation: ${message}`, { details });
}

/** Refuses a buffer shorter than `bytes` (what: the message being decoded). */
export function requireBytes(buf: Uint8Array, bytes: number, what: string): void {
  if (buf.byteLength < bytes) throw nbdProtocolError(`${what} needs ${bytes} bytes, got ${buf.byteLength}`);
}

/** A u64 as a number; refused when it is not a safe integer (no silent rounding). */
export function readSafeU64(buf: Buffer, offset: number, what: string): number {
  const value = buf.readBigUInt64BE(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw nbdProtocolError(`${what} ${value} is beyond 2^53`);
  return Number(value);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A protocol string: valid UTF-8, at most 4096 bytes, no NUL. */
export function decodeNbdString(bytes: Uint8Array, what: string): string {
  if (bytes.byteLength > NBD_MAX_STRING_BYTES) throw nbdProtocolError(`${what} is ${bytes.byteLength} bytes, over the ${NBD_MAX_STRING_BYTES}-byte limit of strings`);
  if (bytes.includes(0)) throw nbdProtocolError(`${what} contains a NUL byte`);
  try {
    return utf8.decode(bytes);
  } catch {
    throw nbdProtocolError(`${what} is not valid UTF-8`);
  }
}

/** A human-readable message from the server (error replies): shown, never trusted, so lenient. */
export function decodeNbdMessage(bytes: Uint8Array): string {
  const text = Buffer.from(bytes.subarray(0, NBD_MAX_STRING_BYTES)).toString('utf8');
  // Control characters could rewrite the user's terminal.
  return text.replace(/\p{Cc}/gu, ' ').trim();
}

/** Encodes a protocol string, refusing what a peer would refuse. */
export function encodeNbdString(text: string, what: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.byteLength > NBD_MAX_STRING_BYTES) throw new BlockrepError('USAGE', `${what} is ${bytes.byteLength} bytes, over the NBD limit of ${NBD_MAX_STRING_BYTES}`);
  if (bytes.includes(0)) throw new BlockrepError('USAGE', `${what} contains a NUL character`);
  return bytes;
}
