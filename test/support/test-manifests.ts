import { ManifestWriter, type FinishedManifest } from '../../src/manifest/manifest-writer.js';

/**
 * Small real manifests for tests of backends and the server: `ids` gives each 4 KiB block's
 * chunk id (undefined: a zero block). Call disposeTestManifests() when done.
 */
const writers: ManifestWriter[] = [];

export async function testManifest(diskId: string, versionId: string, ids: Array<string | undefined>, parent: string | null = null): Promise<FinishedManifest> {
  const writer = await ManifestWriter.create({
    blockSize: 4096,
    imageBytes: ids.length * 4096,
    createdMs: Date.now(),
    meta: { diskId, versionId, parentVersionId: parent, source: { kind: 'image', path: '/dev/null', format: 'raw' } },
  });
  writers.push(writer); // its spool is what stream() reads
  const raw = Buffer.alloc(ids.length * 32);
  ids.forEach((id, i) => {
    if (id !== undefined) Buffer.from(id, 'hex').copy(raw, i * 32);
  });
  await writer.append(new BigUint64Array(ids.map((_, i) => BigInt(i + 1))), raw);
  return writer.finish({ changedBlocks: ids.length, zeroBlocks: ids.filter((i) => i === undefined).length, storedBytes: 0 });
}

export async function testManifestBytes(diskId: string, versionId: string, ids: Array<string | undefined>, parent: string | null = null): Promise<Buffer> {
  const m = await testManifest(diskId, versionId, ids, parent);
  const pieces: Uint8Array[] = [];
  for await (const p of m.stream()) pieces.push(p);
  return Buffer.concat(pieces);
}

export async function disposeTestManifests(): Promise<void> {
  for (const w of writers.splice(0)) await w.dispose();
}
