import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { composeManifest, decodeDelta, DELTA_MAGIC, encodeDelta } from '../../src/manifest/manifest-delta.js';
import { ENTRY_BYTES } from '../../src/manifest/manifest-format.js';
import { ManifestReader } from '../../src/manifest/manifest-reader.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract } from './fuzz-kit.js';
import { entriesFor, headerOf, manifestBytesOf, manifestCase, manifestCaseExample, type ManifestCase } from './manifest-arbitraries.js';

/**
 * Manifest deltas (manifest-delta.ts) as a server receives them: decoded and composed against
 * the parent it holds, they give exactly the sender's manifest, or fail with BAD_REQUEST,
 * REPO_CORRUPT or REPO_FORMAT before the last piece — whatever counts and indexes they claim.
 */
const MODULE = 'manifest-delta';
const contract: DecoderContract = { codes: ['BAD_REQUEST', 'REPO_CORRUPT', 'REPO_FORMAT'], maxAllocBytes: 16 * 1024 * 1024 };
const PARENT_KEY = 'disks/fuzz/20261125T033504.123Z-bbbbbb.manifest';
/** Delta fields: magic, version, header bytes, entry count, digest; the header's own at 52+. */
const FIELDS = [0, 4, 8, 12, 20, 52, 56, 60, 64, 68, 76];

interface DeltaCase {
  parent: ManifestCase;
  next: ManifestCase;
  delta: Buffer;
}

/** A parent, a child of the same block size (some entries changed, grown or shrunk), and the delta between them. */
const deltaCase: fc.Arbitrary<DeltaCase> = fc
  .tuple(manifestCase, fc.integer({ min: -20, max: 40 }), fc.array(fc.nat(), { maxLength: 12 }), fc.nat(1000))
  .map(([parent, grow, changes, seed]) => {
    const parentBlocks = parent.entries.length / ENTRY_BYTES;
    const blocks = Math.max(0, parentBlocks + grow);
    const entries = Buffer.alloc(blocks * ENTRY_BYTES);
    parent.entries.copy(entries, 0, 0, Math.min(parent.entries.length, entries.length));
    if (blocks > parentBlocks) entriesFor(blocks, seed + 1).copy(entries, parentBlocks * ENTRY_BYTES, parentBlocks * ENTRY_BYTES);
    for (const c of changes) if (blocks > 0) entries.writeBigUInt64BE(BigInt(c), (c % blocks) * ENTRY_BYTES);
    const next: ManifestCase = { ...parent, imageBytes: blocks * parent.blockSize, entries };
    const differing: Array<{ index: number; entry: Buffer }> = [];
    for (let i = 0; i < blocks; i++) {
      const entry = entries.subarray(i * ENTRY_BYTES, (i + 1) * ENTRY_BYTES);
      if (i >= parentBlocks || !entry.equals(parent.entries.subarray(i * ENTRY_BYTES, (i + 1) * ENTRY_BYTES))) differing.push({ index: i, entry });
    }
    const full = manifestBytesOf(next);
    const digest = createHash('sha256').update(full.subarray(0, -32)).digest();
    return { parent, next, delta: encodeDelta(headerOf(next), digest, differing) };
  });

async function parentReader(parent: ManifestCase): Promise<ManifestReader> {
  const backend = new MemoryBackend();
  await backend.write(PARENT_KEY, manifestBytesOf(parent));
  return ManifestReader.open(backend, PARENT_KEY);
}

/** What the server does with a delta: decode, compose against the parent, collect the bytes. */
async function compose(bytes: Buffer, parent: ManifestReader | undefined): Promise<Buffer> {
  const delta = decodeDelta(bytes, 'delta');
  const parts: Uint8Array[] = [];
  for await (const piece of composeManifest(delta, parent, 'delta')) parts.push(piece);
  return Buffer.concat(parts);
}

describe('manifest deltas under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    const m = await parentReader(manifestCaseExample);
    await replayCorpus(MODULE, async (bytes) => {
      await underContract(contract, () => compose(bytes, m));
      await underContract(contract, () => compose(bytes, undefined));
    });
  });

  it('round-trips: composed against its parent, a delta gives the sender\'s manifest byte for byte', async () => {
    await checkProperty(MODULE, deltaCase, async ({ parent, next, delta }) => {
      expect((await compose(delta, await parentReader(parent))).equals(manifestBytesOf(next))).toBe(true);
    }, 100);
  });

  it('mutated deltas compose to the sender\'s manifest or fail with a stable code, within bounds', async () => {
    const cases = deltaCase.chain((c) => mutated(fc.constant(c.delta), FIELDS).map((bytes) => ({ ...c, bytes })));
    await checkProperty(
      MODULE,
      cases,
      async ({ parent, next, bytes }) => {
        const out = await underContract(contract, async () => compose(bytes, await parentReader(parent)));
        // Whatever passes the digest check is the manifest the digest names.
        if (out.ok && out.value.subarray(-32).equals(manifestBytesOf(next).subarray(-32))) expect(out.value.equals(manifestBytesOf(next))).toBe(true);
      },
      300,
      ({ bytes }) => bytes,
    );
  });

  it('arbitrary bytes behind the magic and version fail with a stable code, within bounds', async () => {
    const magic = Buffer.alloc(6);
    magic.writeUInt32BE(DELTA_MAGIC, 0);
    magic.writeUInt16BE(1, 4);
    await checkProperty(MODULE, withMagic(magic, 400), async (bytes) => {
      await underContract(contract, () => compose(bytes, undefined));
    }, 300);
  });
});
