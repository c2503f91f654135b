import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CHUNK_MAGIC, chunkId, decodeChunk, encodeChunk } from '../../src/chunk/chunk-codec.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract } from './fuzz-kit.js';

/**
 * The chunk blob (chunk-codec.ts) as read back from storage: whatever the bytes, decodeChunk
 * returns the content whose SHA-256 is the id, or fails with CHUNK_CORRUPT, allocating no more
 * than a chunk may hold (64 MiB) whatever the header or the zstd frames claim.
 */
const MODULE = 'chunk-codec';
const contract: DecoderContract = { codes: ['CHUNK_CORRUPT'], maxAllocBytes: 64 * 1024 * 1024 };
const ANY_ID = 'ab'.repeat(32);

/** Block contents: random (stored as is), and repetitive (compressed). */
const content = fc.oneof(
  fc.uint8Array({ maxLength: 8192 }),
  fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.integer({ min: 1, max: 2048 })).map(([unit, times]) => Buffer.concat(Array.from({ length: times }, () => unit))),
);
const encoded = fc.tuple(content, fc.boolean()).map(([raw, compress]) => ({ raw: Buffer.from(raw), chunk: encodeChunk(raw, { compress }) }));
/** The header's fields: magic, version, codec, reserved, length; and the zstd frame header after it. */
const FIELDS = [0, 4, 5, 6, 8, 12, 16, 17, 18, 20];

describe('chunk codec under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    await replayCorpus(MODULE, async (bytes) => {
      await underContract(contract, () => decodeChunk(bytes, ANY_ID));
      await underContract(contract, () => decodeChunk(bytes, chunkId(bytes.subarray(12))));
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
        const out = await underContract(contract, () => decodeChunk(blob, id));
        if (out.ok) expect(out.value.equals(raw)).toBe(true);
      },
      300,
      ({ blob }) => blob,
    );
  });

  it('arbitrary bytes behind a valid magic and version fail with CHUNK_CORRUPT, within bounds', async () => {
    const magic = Buffer.alloc(5);
    magic.writeUInt32BE(CHUNK_MAGIC, 0);
    magic[4] = 1;
    const blobs = fc.oneof(withMagic(magic), withMagic(Buffer.concat([magic, Buffer.from([1, 0, 0])])), withMagic(Buffer.concat([magic, Buffer.from([1, 0, 0, 0, 0, 0x10, 0, 0x28, 0xb5, 0x2f, 0xfd])])));
    await checkProperty(MODULE, blobs, async (blob) => {
      await underContract(contract, () => decodeChunk(blob, ANY_ID));
    }, 300);
  });
});
