import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { ENTRY_BYTES, MANIFEST_FORMAT_VERSION } from '../../src/manifest/manifest-format.js';
import { idHex, isZeroId, ManifestReader } from '../../src/manifest/manifest-reader.js';
import { ManifestWriter } from '../../src/manifest/manifest-writer.js';
import { tempDir } from '../support/temp-dir.js';

const meta = { diskId: 'vm1/vda', versionId: '20261126T033504.123Z-3fa9c1', parentVersionId: null, source: { kind: 'image' as const, path: '/x.img', format: 'raw' as const } };

async function writeManifest(backend: LocalBackend, key: string, imageBytes: number, blockSize: number): Promise<{ hashes: bigint[]; ids: Buffer }> {
  const writer = await ManifestWriter.create({ blockSize, imageBytes, createdMs: 1_700_000_000_000, meta });
  const n = writer.blockCount;
  const hashes: bigint[] = [];
  const ids = Buffer.alloc(n * 32);
  for (let i = 0; i < n; i++) {
    hashes.push(BigInt(i) * 0x9e3779b97f4a7c15n % 2n ** 64n);
    if (i % 3 !== 0) ids.fill((i % 251) + 1, i * 32, i * 32 + 32);
  }
  // Append in uneven batches, as a scan would.
  for (let start = 0; start < n; ) {
    const count = Math.min(n - start, 1 + (start % 7) * 300);
    await writer.append(BigUint64Array.from(hashes.slice(start, start + count)), ids.subarray(start * 32, (start + count) * 32));
    start += count;
  }
  await backend.write(key, (await writer.finish({ changedBlocks: 5, zeroBlocks: 7, storedBytes: 123456 })).stream());
  await writer.dispose();
  return { hashes, ids };
}

describe('manifest', () => {
  it('round-trips header and entries through a backend, with random access', async () => {
    const backend = new LocalBackend(await tempDir());
    const { hashes, ids } = await writeManifest(backend, 'm/one', 10_000 * 4096 + 17, 4096);
    const reader = await ManifestReader.open(backend, 'm/one');
    expect(reader.header).toMatchObject({ formatVersion: MANIFEST_FORMAT_VERSION, blockSize: 4096, imageBytes: 10_000 * 4096 + 17, blockCount: 10_001, changedBlocks: 5, zeroBlocks: 7, storedBytes: 123456, meta });
    const some = await reader.entries(2999, 5);
    for (let i = 0; i < 5; i++) {
      expect(some.hashes[i]).toBe(hashes[2999 + i]);
      expect(idHex(some.ids, i)).toBe(ids.toString('hex', (2999 + i) * 32, (3000 + i) * 32));
    }
    let seen = 0;
    for await (const batch of reader.batches(4096)) {
      for (let i = 0; i < batch.hashes.length; i++) {
        const block = batch.startBlock + i;
        expect(batch.hashes[i]).toBe(hashes[block]);
        expect(isZeroId(batch.ids, i)).toBe(block % 3 === 0);
      }
      seen += batch.hashes.length;
    }
    expect(seen).toBe(10_001);
  });

  it('refuses a manifest with one flipped bit, a truncated one and a newer format version', async () => {
    const root = await tempDir();
    const backend = new LocalBackend(root);
    await writeManifest(backend, 'm/a', 1 << 20, 4096);
    const good = await readFile(join(root, 'm', 'a'));

    const flipped = Buffer.from(good);
    flipped[good.length - 100]! ^= 0x01;
    await writeFile(join(root, 'm', 'b'), flipped);
    await expect(ManifestReader.open(backend, 'm/b')).rejects.toMatchObject({ code: 'REPO_CORRUPT', message: expect.stringMatching(/digest mismatch/) });

    await writeFile(join(root, 'm', 'c'), good.subarray(0, good.length - ENTRY_BYTES));
    await expect(ManifestReader.open(backend, 'm/c')).rejects.toMatchObject({ code: 'REPO_CORRUPT' });

    const newer = Buffer.from(good);
    newer.writeUInt16BE(MANIFEST_FORMAT_VERSION + 1, 4);
    await writeFile(join(root, 'm', 'd'), newer);
    await expect(ManifestReader.open(backend, 'm/d')).rejects.toMatchObject({ code: 'REPO_FORMAT', message: expect.stringMatching(/newer blockrep/) });

    const older = Buffer.from(good);
    older.writeUInt16BE(0, 4);
    await writeFile(join(root, 'm', 'e'), older);
    await expect(ManifestReader.open(backend, 'm/e')).rejects.toMatchObject({ code: 'REPO_FORMAT', message: expect.stringMatching(/older blockrep/) });
  });

  it('refuses to finish with missing entries', async () => {
    const writer = await ManifestWriter.create({ blockSize: 4096, imageBytes: 8192, createdMs: 0, meta });
    await writer.append(new BigUint64Array(1), Buffer.alloc(32));
    await expect(writer.finish({ changedBlocks: 0, zeroBlocks: 0, storedBytes: 0 })).rejects.toMatchObject({ code: 'INTERNAL' });
    await writer.dispose();
  });
});
