import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';

/**
 * The AEAD every sealed object uses: AES-256-GCM under a key of its own. Each seal draws 24
 * random bytes; the first 12 derive the object's key from the repository's seal key
 * (HMAC-SHA-256), the last 12 are the GCM nonce. Random 96-bit GCM nonces are safe for about
 * 2^32 messages per key; here each derived key seals one object (or one manifest page), and two
 * seals share a key and a nonce only if 192 random bits repeat (about 2^-96 after 2^48 seals),
 * so a repository has no message bound to watch. The cost is one HMAC per object.
 */
export const NONCE_BYTES = 24;
export const TAG_BYTES = 16;
/** Bytes a seal adds to its plaintext. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;

function objectKey(sealKey: Uint8Array, nonce: Uint8Array): Buffer {
  return createHmac('sha256', sealKey).update(nonce.subarray(0, 12)).digest();
}

/**
 * nonce (24) ‖ ciphertext ‖ tag (16), written into `out` at `offset` (which must have
 * SEAL_OVERHEAD + plaintext bytes there). `aad` is authenticated, not stored.
 */
export function sealInto(sealKey: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, out: Buffer, offset: number): void {
  const nonce = randomBytes(NONCE_BYTES);
  nonce.copy(out, offset);
  const cipher = createCipheriv('aes-256-gcm', objectKey(sealKey, nonce), nonce.subarray(12));
  cipher.setAAD(aad);
  let at = offset + NONCE_BYTES;
  at += cipher.update(plaintext).copy(out, at);
  at += cipher.final().copy(out, at);
  cipher.getAuthTag().copy(out, at);
}

/** The plaintext of nonce ‖ ciphertext ‖ tag, or undefined when it does not authenticate. */
export function openSealed(sealKey: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer | undefined {
  if (sealed.byteLength < SEAL_OVERHEAD) return undefined;
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', objectKey(sealKey, nonce), nonce.subarray(12));
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.byteLength - TAG_BYTES));
  try {
    const head = decipher.update(sealed.subarray(NONCE_BYTES, sealed.byteLength - TAG_BYTES));
    const tail = decipher.final();
    return tail.length === 0 ? head : Buffer.concat([head, tail]);
  } catch {
    return undefined;
  }
}
