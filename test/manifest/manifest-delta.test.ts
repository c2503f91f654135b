import { describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { composeManifest, decodeDelta } from '../../src/manifest/manifest-delta.js';
import { ManifestReader } from '../../src/manifest/manifest-reader.js';
import { ManifestWriter } from '../../src/manifest/manifest-writer.js';
import { tempDir } from '../support/temp-dir.js';

const BLOCKS = 20_000;
const meta = (versionId: string, parentVersionId: string | null) => ({ diskId: 'vm/vda', versionId, parentVersionId, source: { kind: 'image' as const } });

async function build(versionId: string, parentVersionId: string | null, hashOf: (i: number) => bigint, differs?: (i: number) => boolean) {
  const w = await ManifestWriter.create({ blockSize: 65536, imageBytes: BLOCKS * 65536, createdMs: 1, meta: meta(versionId, parentVersionId) });
  for (let start = 0; start < BLOCKS; start += 3000) {
    const n = Math.min(3000, BLOCKS - start);
    const hashes = new BigUint64Array(n);
    const ids = Buffer.alloc(n * 32);
    const d = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      hashes[i] = hashOf(start + i);
      ids.writeBigUInt64BE(hashOf(start + i), i * 32);
      d[i] = differs?.(start + i) ? 1 : 0;
    }
    await w.append(hashes, ids, d);
  }
  return { writer: w, finished: await w.finish({ changedBlocks: 3, zeroBlocks: 0, storedBytes: 0 }) };
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of stream) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

describe('manifest delta', () => {
  it('carries only the changed entries and composes to the exact manifest', async () => {
    const backend = new LocalBackend(await tempDir());
    const v1 = '20261126T000000.000Z-000001';
    const v2 = '20261127T000000.000Z-000002';
    const base = (i: number) => BigInt(i + 1);
    const changed = new Set([0, 7, 12_345, BLOCKS - 1]);
    const p = await build(v1, null, base);
    expect(p.finished.delta()).toBeUndefined(); // no parent, no delta
    await backend.write('p', p.finished.stream());
    const c = await build(v2, v1, (i) => (changed.has(i) ? BigInt(i) * 1000n + 7n : base(i)), (i) => changed.has(i));
    const delta = c.finished.delta()!;
    expect(delta.length).toBeLessThan(c.finished.bytes / 100);
    const parent = await ManifestReader.open(backend, 'p');
    const composed = await collect(composeManifest(decodeDelta(delta, 'test'), parent, 'test'));
    expect(composed.equals(await collect(c.finished.stream()))).toBe(true);

    // Against another parent the digest check refuses it, before the last piece.
    await backend.write('q', (await build(v1, null, (i) => BigInt(i + 2))).finished.stream());
    const wrong = await ManifestReader.open(backend, 'q');
    await expect(collect(composeManifest(decodeDelta(delta, 'test'), wrong, 'test'))).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    // A truncated or garbled delta is refused.
    expect(() => decodeDelta(delta.subarray(0, delta.length - 1), 'test')).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }));
    await p.writer.dispose();
    await c.writer.dispose();
  });
});
