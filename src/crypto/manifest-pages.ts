import { openSealed, SEAL_OVERHEAD, sealInto } from './object-seal.js';

/**
 * A manifest of an encrypted repository, sealed in pages so that a reader can still read any
 * range of it (entries by block) having opened only the pages it needs, and a writer can seal it
 * as it streams: memory stays at one page either way.
 *
 * | offset | size      | field                                                  |
 * |--------|-----------|--------------------------------------------------------|
 * | 0      | 4         | magic "BRME"                                           |
 * | 4      | 1         | envelope version (1)                                   |
 * | 5      | 3         | reserved, 0                                            |
 * | 8      | 4         | page bytes P (plaintext per page)                      |
 * | 12     | 4         | reserved, 0                                            |
 * | 16     | P + 40    | page 0: nonce (24), ciphertext, tag (16)               |
 * | …      | …         | every page but the last holds P bytes; the last 1 to P |
 *
 * Each page's associated data: the 16 header bytes, the page's index (u64), a final flag (1 for
 * the last page, else 0) and the object's key (`disks/<disk>/<version>.manifest`, UTF-8). So a
 * page moved, a manifest cut at a page boundary, or one copied from another disk or version
 * does not open. The plaintext length follows from the stored length.
 */
export const MANIFEST_ENVELOPE_MAGIC = 0x42524d45; // "BRME"
export const MANIFEST_ENVELOPE_VERSION = 1;
export const MANIFEST_ENVELOPE_HEADER_BYTES = 16;
export const MANIFEST_PAGE_BYTES = 64 * 1024;

export function manifestEnvelopeHeader(pageBytes = MANIFEST_PAGE_BYTES): Buffer {
  const head = Buffer.alloc(MANIFEST_ENVELOPE_HEADER_BYTES);
  head.writeUInt32BE(MANIFEST_ENVELOPE_MAGIC, 0);
  head.writeUInt8(MANIFEST_ENVELOPE_VERSION, 4);
  head.writeUInt32BE(pageBytes, 8);
  return head;
}

/** What is wrong with an envelope's header (checkable without the key), or undefined. */
export function manifestEnvelopeProblem(head: Buffer, sealedBytes: number): string | undefined {
  if (head.length < MANIFEST_ENVELOPE_HEADER_BYTES || head.readUInt32BE(0) !== MANIFEST_ENVELOPE_MAGIC) return 'not a sealed manifest (bad magic)';
  if (head.readUInt8(4) !== MANIFEST_ENVELOPE_VERSION) return `unknown envelope version ${head.readUInt8(4)}`;
  const pageBytes = head.readUInt32BE(8);
  if (pageBytes !== MANIFEST_PAGE_BYTES || head.readUIntBE(5, 3) !== 0 || head.readUInt32BE(12) !== 0) return 'unknown page geometry or reserved bytes set';
  if (plainBytesOf(sealedBytes, pageBytes) === undefined) return `${sealedBytes} bytes is no whole number of sealed pages`;
  return undefined;
}

/** The plaintext length of a sealed manifest of `sealedBytes`, or undefined if no length gives it. */
export function plainBytesOf(sealedBytes: number, pageBytes = MANIFEST_PAGE_BYTES): number | undefined {
  const body = sealedBytes - MANIFEST_ENVELOPE_HEADER_BYTES;
  if (body <= SEAL_OVERHEAD) return undefined;
  const pages = Math.ceil(body / (pageBytes + SEAL_OVERHEAD));
  const plain = body - pages * SEAL_OVERHEAD;
  return plain > (pages - 1) * pageBytes && plain <= pages * pageBytes ? plain : undefined;
}

export function sealedBytesOf(plainBytes: number, pageBytes = MANIFEST_PAGE_BYTES): number {
  return MANIFEST_ENVELOPE_HEADER_BYTES + plainBytes + Math.max(1, Math.ceil(plainBytes / pageBytes)) * SEAL_OVERHEAD;
}

/** Where page `index` starts in the sealed object. */
export function pageOffset(index: number, pageBytes = MANIFEST_PAGE_BYTES): number {
  return MANIFEST_ENVELOPE_HEADER_BYTES + index * (pageBytes + SEAL_OVERHEAD);
}

function pageAad(head: Buffer, objectKey: string, index: number, final: boolean): Buffer {
  const pos = Buffer.alloc(9);
  pos.writeBigUInt64BE(BigInt(index), 0);
  pos.writeUInt8(final ? 1 : 0, 8);
  return Buffer.concat([head, pos, Buffer.from(objectKey, 'utf8')]);
}

export function sealManifestPage(sealKey: Uint8Array, head: Buffer, objectKey: string, index: number, final: boolean, plaintext: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plaintext.byteLength + SEAL_OVERHEAD);
  sealInto(sealKey, plaintext, pageAad(head, objectKey, index, final), out, 0);
  return out;
}

export function openManifestPage(sealKey: Uint8Array, head: Buffer, objectKey: string, index: number, final: boolean, sealed: Uint8Array): Buffer | undefined {
  return openSealed(sealKey, sealed, pageAad(head, objectKey, index, final));
}

/**
 * Seals a manifest as it streams: the header, then a page each time one fills, the last one
 * marked final. At most one page is held.
 */
export async function* sealManifestStream(sealKey: Uint8Array, objectKey: string, plain: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const head = manifestEnvelopeHeader();
  yield head;
  const page = Buffer.allocUnsafe(MANIFEST_PAGE_BYTES);
  let filled = 0;
  let index = 0;
  for await (const piece of plain) {
    let at = 0;
    while (at < piece.byteLength) {
      if (filled === MANIFEST_PAGE_BYTES) {
        // A full page is sealed only once more follows: the last page carries the final flag.
        yield sealManifestPage(sealKey, head, objectKey, index++, false, page);
        filled = 0;
      }
      const n = Math.min(piece.byteLength - at, MANIFEST_PAGE_BYTES - filled);
      page.set(piece.subarray(at, at + n), filled);
      filled += n;
      at += n;
    }
  }
  yield sealManifestPage(sealKey, head, objectKey, index, true, page.subarray(0, filled));
}
