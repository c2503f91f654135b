import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CHUNK_MAGIC, chunkId, decodeChunk, encodeChunk } from '../../src/chunk/chunk-codec.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract, type Outcome } from './fuzz-kit.js';

/**
 * The chunk blob (chunk-codec.ts) as read back from storage: whatever the bytes, decodeChunk
 * returns the content whose SHA-256 is the id, or fails with CHUNK_CORRUPT, allocating no more
 * than a chunk may hold (64 MiB) whatever the header or the zstd frames claim — and a failure
 * leaves nothing behind: the next chunk decodes as if it were the first (verify reads on past
 * a damaged chunk; a server decodes for all its clients).
 */
const MODULE = 'chunk-codec';
const contract: DecoderContract = { codes: ['CHUNK_CORRUPT'], maxAllocBytes: 64 * 1024 * 1024 };
const ANY_ID = 'ab'.repeat(32);
const GOOD = encodeChunk(Buffer.alloc(100_000, 7));

/** Decodes `blob` under the contract, then a valid compressed chunk, which must still decode. */
async function decodeThenGood(blob: Uint8Array, id: string): Promise<Outcome<Buffer>> {
  const out = await underContract(contract, () => decodeChunk(blob, id));
  expect(decodeChunk(GOOD.blob, GOOD.id).length).toBe(100_000);
  return out;
}

/** Block contents: random (stored as is), and repetitive (compressed). */
const content = fc.oneof(
  fc.uint8Array({ maxLength: 8192 }),
  fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.integer({ min: 1, max: 2048 })).map(([unit, times]) => Buffer.concat(Array.from({ length: times }, () => unit))),
);
/** Repetitive blocks past 64 KiB: their frames state the size in 4 bytes, room for any claim. */
const large = fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 65_792, max: 300_000 })).map(([unit, bytes]) => {
  const raw = Buffer.alloc(bytes);
  for (let at = 0; at < bytes; at += unit.length) Buffer.from(unit).copy(raw, at);
  return raw;
});
const encoded = fc.tuple(content, fc.boolean()).map(([raw, compress]) => ({ raw: Buffer.from(raw), chunk: encodeChunk(raw, { compress }) }));
/** The header's fields: magic, version, codec, reserved, length; and the zstd frame header after it. */
const FIELDS = [0, 4, 5, 6, 8, 12, 16, 17, 18, 20];

describe('chunk codec under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    await replayCorpus(MODULE, async (bytes) => {
      await decodeThenGood(bytes, ANY_ID);
      await decodeThenGood(bytes, chunkId(bytes.subarray(12)));
    });
  });

  it('round-trips every content, compressed or stored', async () => {
    await checkProperty(MODULE, encoded, ({ raw, chunk }) => {
      expect(chunk.id).toBe(chunkId(raw));
      expect(decodeChunk(chunk.blob, chunk.id).equals(raw)).toBe(true);
    }, 200);
  });

  it('mutated blobs decode to their own content or fail with CHUNK_CORRUPT, within bounds', async () => {
    const cases = encoded.chain(({ raw, chunk }) => mutated(fc.constant(Buffer.from(chunk.blob)), FIELDS).map((blob) => ({ raw, id: chunk.id, blob })));
    await checkProperty(
      MODULE,
      cases,
      async ({ raw, id, blob }) => {
        const out = await decodeThenGood(blob, id);
        if (out.ok) expect(out.value.equals(raw)).toBe(true);
      },
      300,
      ({ blob }) => blob,
    );
  });

  it('blobs whose zstd frame header claims another content size fail with CHUNK_CORRUPT, within bounds', async () => {
    // The frame content size field (RFC 8878 3.1.1.1): its width from the descriptor's top bits.
    const lying = fc
      .tuple(fc.oneof(content.filter((raw) => raw.length > 0), large), fc.oneof(fc.constantFrom(0, 1, 2 ** 26, 2 ** 31, 2 ** 32 - 1), fc.nat({ max: 2 ** 32 - 1 })))
      .map(([raw, claimed]) => ({ chunk: encodeChunk(raw), claimed }))
      .filter(({ chunk }) => chunk.blob[5] === 1)
      .map(({ chunk, claimed }) => {
        const blob = Buffer.from(chunk.blob);
        const fhd = blob[16]!;
        const singleSegment = (fhd >> 5) & 1;
        const width = [singleSegment ? 1 : 0, 2, 4, 8][fhd >> 6]!;
        const at = 17 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3]!;
        if (width === 1) blob[at] = claimed & 0xff;
        else if (width === 2) blob.writeUInt16LE(Math.max(0, (claimed & 0xffff) - 256), at);
        else if (width === 4) blob.writeUInt32LE(claimed >>> 0, at);
        else if (width === 8) blob.writeBigUInt64LE(BigInt(claimed) * 1024n, at);
        return { id: chunk.id, blob };
      });
    await checkProperty(
      MODULE,
      lying,
      async ({ id, blob }) => {
        await decodeThenGood(blob, id);
      },
      100,
      ({ blob }) => blob,
    );
  });

  it('arbitrary bytes behind a valid magic and version fail with CHUNK_CORRUPT, within bounds', async () => {
    const magic = Buffer.alloc(5);
    magic.writeUInt32BE(CHUNK_MAGIC, 0);
    magic[4] = 1;
    const blobs = fc.oneof(withMagic(magic), withMagic(Buffer.concat([magic, Buffer.from([1, 0, 0])])), withMagic(Buffer.concat([magic, Buffer.from([1, 0, 0, 0, 0, 0x10, 0, 0x28, 0xb5, 0x2f, 0xfd])])));
    await checkProperty(MODULE, blobs, async (blob) => {
      await decodeThenGood(blob, ANY_ID);
    }, 300);
  });
});
