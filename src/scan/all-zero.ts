/**
 * Whether `bytes` are all zero. Called only for blocks whose xxh64 already equals the zero
 * hash, so it almost always returns true and reads the block once; Buffer.compare is a native
 * memcmp, far faster than a JavaScript loop. The zero buffer is shared and bounded (1 MiB):
 * long inputs are compared a window at a time.
 */
const ZERO_WINDOW = 1024 * 1024;
let zeros: Buffer | undefined;

export function isAllZero(bytes: Uint8Array): boolean {
  zeros ??= Buffer.alloc(ZERO_WINDOW);
  const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at < data.byteLength; at += ZERO_WINDOW) {
    const end = Math.min(at + ZERO_WINDOW, data.byteLength);
    if (Buffer.compare(data.subarray(at, end), zeros.subarray(0, end - at)) !== 0) return false;
  }
  return true;
}
