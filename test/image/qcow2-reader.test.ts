import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/image/open-image.js';
import { Qcow2Reader } from '../../src/image/qcow2-reader.js';
import { convertImage, createImage, makeTempDir, patternBytes, qemuIo, removeTempDir } from '../support/qemu-tools.js';
import { expectMatchesOracle } from './image-oracle.js';

/**
 * Qcow2Reader against qemu-img convert -O raw, one case per qcow2 feature. Every image starts
 * from the same raw source (compressible data, incompressible data, zero gaps, data in the
 * last partial cluster) and then gets qemu-io writes that make partial clusters, zero
 * clusters, compressed clusters and discarded ranges.
 */
const KiB = 1024;
const MiB = 1024 * KiB;
/** Not a multiple of any cluster size above 512 bytes. */
const SOURCE_BYTES = 4 * MiB + 64 * KiB + 1536;

let dir: string;
let source: string;

beforeAll(async () => {
  dir = await makeTempDir('blockrep-qcow2-');
  source = join(dir, 'source.raw');
  const raw = Buffer.alloc(SOURCE_BYTES);
  patternBytes(256 * KiB, 1, 16).copy(raw, 0); // compressible
  patternBytes(300 * KiB, 2).copy(raw, MiB); // incompressible
  patternBytes(512 * KiB, 3, 4).copy(raw, 1536 * KiB); // compressible
  patternBytes(3000, 4).copy(raw, SOURCE_BYTES - 3000); // crosses into the last partial cluster
  await writeFile(source, raw);
});

afterAll(async () => {
  await removeTempDir(dir);
});

interface Case {
  name: string;
  options: Record<string, string | number | boolean>;
  compress?: boolean;
}

/** qemu-io edits: partial writes, zeroes, a compressed cluster, a discard. */
function edits(clusterSize: number): string[] {
  // Compressed writes need an unallocated cluster: [2 MiB, 4 MiB) is zero in the source.
  const compressedAt = Math.floor((3 * MiB) / clusterSize) * clusterSize;
  return [
    'write -P 0x5a 700000 5000', // unaligned, in a zero gap: allocates with COW zeros
    'write -P 0x11 1100000 70000', // unaligned, over incompressible data
    `write -z ${MiB + 64 * KiB} ${128 * KiB}`, // zero clusters (v3) or deallocation (v2)
    `write -c -P 0x77 ${compressedAt} ${clusterSize}`,
    `discard ${1536 * KiB + 3 * 4 * KiB} ${64 * KiB}`,
    `write -P 0x22 ${SOURCE_BYTES - 700} 700`, // the very end
  ];
}

async function buildCase(c: Case, name: string): Promise<string> {
  const image = join(dir, `${name}.qcow2`);
  await convertImage(source, image, { fromFormat: 'raw', toFormat: 'qcow2', options: c.options, compress: c.compress ?? false });
  const clusterSize = Number(c.options['cluster_size'] ?? 65536);
  await qemuIo(image, edits(clusterSize));
  return image;
}

const cases: Case[] = [
  { name: 'v3, 64 KiB clusters', options: {} },
  { name: 'v2 (compat=0.10), 64 KiB clusters', options: { compat: '0.10' } },
  { name: 'v2, 4 KiB clusters', options: { compat: '0.10', cluster_size: 4096 } },
  { name: 'v3, 512 B clusters', options: { cluster_size: 512 } },
  { name: 'v3, 4 KiB clusters', options: { cluster_size: 4096 } },
  { name: 'v3, 2 MiB clusters', options: { cluster_size: 2 * MiB } },
  { name: 'zlib-compressed clusters', options: {}, compress: true },
  { name: 'zlib-compressed, 4 KiB clusters', options: { cluster_size: 4096 }, compress: true },
  { name: 'zstd-compressed clusters', options: { compression_type: 'zstd' }, compress: true },
  { name: 'zstd-compressed, 2 MiB clusters', options: { compression_type: 'zstd', cluster_size: 2 * MiB }, compress: true },
  { name: 'extended L2 (subclusters)', options: { extended_l2: 'on' } },
  { name: 'extended L2, 2 MiB clusters', options: { extended_l2: 'on', cluster_size: 2 * MiB } },
];

describe('Qcow2Reader matches qemu-img convert', () => {
  cases.forEach((c, i) => {
    it(c.name, async () => {
      const image = await buildCase(c, `case-${i}`);
      // With 2 MiB clusters every cluster of this image holds some data.
      const clusterSize = Number(c.options['cluster_size'] ?? 65536);
      const minZeroBytes = clusterSize < 2 * MiB ? 512 * KiB : 0;
      await expectMatchesOracle(image, { oraclePath: join(dir, `case-${i}.out`), minZeroBytes });
    });
  });

  it('reads a fully zero-flagged and a fully unallocated image without touching data', async () => {
    const image = join(dir, 'empty.qcow2');
    await createImage(image, { format: 'qcow2', size: 8 * MiB });
    await qemuIo(image, [`write -z 0 ${4 * MiB}`]);
    await expectMatchesOracle(image, { oraclePath: join(dir, 'empty.out') });
    const reader = await openImage({ path: image });
    try {
      expect(await reader.extents(0, reader.virtualSize)).toEqual([{ offset: 0, length: 8 * MiB, kind: 'zero' }]);
    } finally {
      await reader.close();
    }
  });

  it('reports preallocated but unwritten clusters (holes in the host file) as zero', async () => {
    for (const preallocation of ['metadata', 'falloc']) {
      const image = join(dir, `prealloc-${preallocation}.qcow2`);
      await createImage(image, { format: 'qcow2', size: 8 * MiB, options: { preallocation } });
      await qemuIo(image, ['write -P 0x71 100000 5000', `write -P 0x72 ${5 * MiB} ${64 * KiB}`]);
      // metadata: the data clusters are holes; falloc: unwritten extents, which ext4 and
      // tmpfs also report as holes (other file systems may call them data, which is allowed).
      const minZeroBytes = preallocation === 'metadata' ? 7 * MiB : 0;
      await expectMatchesOracle(image, { oraclePath: join(dir, `prealloc-${preallocation}.out`), minZeroBytes });
    }
  });

  it('maps a 1 TiB image with a little data quickly', async () => {
    const TiB = 1024 * 1024 * MiB;
    const image = join(dir, 'huge.qcow2');
    await createImage(image, { format: 'qcow2', size: TiB });
    await qemuIo(image, [`write -P 0x81 ${700 * 1024 * MiB} 4096`, `write -z ${800 * 1024 * MiB} ${MiB}`]);
    const reader = await openImage({ path: image });
    try {
      const started = performance.now();
      const extents = await reader.extents(0, TiB);
      expect(performance.now() - started).toBeLessThan(100);
      // QEMU fills the rest of the new cluster with zeros, by punching a hole in the host
      // file where the file system can: the data extent is 4 KiB or the whole cluster.
      const dataBytes = extents[1]?.length ?? 0;
      expect([4096, 64 * KiB]).toContain(dataBytes);
      expect(extents).toEqual([
        { offset: 0, length: 700 * 1024 * MiB, kind: 'zero' },
        { offset: 700 * 1024 * MiB, length: dataBytes, kind: 'data' },
        { offset: 700 * 1024 * MiB + dataBytes, length: TiB - 700 * 1024 * MiB - dataBytes, kind: 'zero' },
      ]);
      const buf = Buffer.alloc(8192);
      await reader.read(buf, 700 * 1024 * MiB);
      expect(buf.subarray(0, 4096).every((b) => b === 0x81) && buf.subarray(4096).every((b) => b === 0)).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it('subcluster allocation falls through to the backing file per subcluster', async () => {
    const base = join(dir, 'sub-base.qcow2');
    const top = join(dir, 'sub-top.qcow2');
    await createImage(base, { format: 'qcow2', size: 2 * MiB });
    await qemuIo(base, [`write -P 0x33 0 ${2 * MiB}`]);
    await createImage(top, { format: 'qcow2', options: { extended_l2: 'on' }, backing: 'sub-base.qcow2', backingFormat: 'qcow2' });
    // 64 KiB clusters → 2 KiB subclusters: touch some, zero some, leave the rest to the base.
    await qemuIo(top, ['write -P 0x44 2048 2048', 'write -P 0x55 10240 100', 'write -z 20480 4096', 'write -P 0x66 200000 70000']);
    await expectMatchesOracle(top, { oraclePath: join(dir, 'sub.out') });
    const reader = await openImage({ path: top });
    try {
      expect(reader).toBeInstanceOf(Qcow2Reader);
      const extents = await reader.extents(0, 64 * KiB);
      expect(extents.find((e) => e.kind === 'zero' && e.offset === 20480)).toBeDefined();
    } finally {
      await reader.close();
    }
  });
});
