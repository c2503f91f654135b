import { mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { convertImage, convertToRaw, createImage, patchFile, patternBytes, qemuImg, qemuIo, u64be } from '../support/qemu-tools.js';
import { openTestRepo, repoKinds } from '../support/repo-kinds.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The whole product, offline: for every kind of image, back up → change with qemu-io → back
 * up → restore each version → byte-equal to `qemu-img convert -O raw` of that state. A third
 * backup with nothing changed must store no chunk. Run with the repository in a directory and
 * behind a real `blockrep serve` (repo-kinds.ts).
 */
const KiB = 1024;
const MiB = 1024 * KiB;
let dir: string;
let source: string;
const SOURCE_BYTES = 6 * MiB + 1536; // not a multiple of any block size

beforeAll(async () => {
  dir = await tempDir('blockrep-roundtrip-');
  source = join(dir, 'source.raw');
  const raw = Buffer.alloc(SOURCE_BYTES);
  patternBytes(700 * KiB, 1, 16).copy(raw, 0); // compressible
  patternBytes(900 * KiB, 2).copy(raw, MiB + 3000); // incompressible, unaligned
  patternBytes(5000, 4).copy(raw, SOURCE_BYTES - 5000); // into the last partial block
  await writeFile(source, raw);
});

interface Case {
  name: string;
  blockSize: string;
  /** Builds the image (state 1); returns its path and qemu-io format. */
  build(d: string): Promise<{ image: string; format: 'raw' | 'qcow2' }>;
  /** qemu-io commands that make state 2. */
  change: string[];
}

const scattered = ['write -P 0x5a 700000 5000', 'write -P 0x11 2100000 70000', `write -z ${3 * MiB} ${256 * KiB}`, `write -P 0x22 ${SOURCE_BYTES - 700} 700`];

const qcow2From = (options: Record<string, string | number | boolean>, compress = false) => async (d: string) => {
  const image = join(d, 'disk.qcow2');
  await convertImage(source, image, { fromFormat: 'raw', toFormat: 'qcow2', options, compress });
  return { image, format: 'qcow2' as const };
};

const cases: Case[] = [
  {
    name: 'raw with holes, 64 KiB blocks',
    blockSize: '64K',
    build: async (d) => {
      const image = join(d, 'disk.img');
      await writeFile(image, await readFile(source));
      await truncate(image, 64 * MiB); // a long hole at the end
      return { image, format: 'raw' };
    },
    change: [...scattered, `write -P 0x33 ${40 * MiB} 1M`],
  },
  { name: 'qcow2 v2 (compat=0.10), 1 MiB blocks', blockSize: '1M', build: qcow2From({ compat: '0.10' }), change: scattered },
  { name: 'qcow2 v3, 512 B clusters, 4 KiB blocks', blockSize: '4K', build: qcow2From({ cluster_size: 512 }), change: scattered },
  { name: 'qcow2 v3, 2 MiB clusters, 64 KiB blocks', blockSize: '64K', build: qcow2From({ cluster_size: 2 * MiB }), change: scattered },
  { name: 'qcow2 zlib-compressed', blockSize: '256K', build: qcow2From({}, true), change: [...scattered, `write -c -P 0x77 ${4 * MiB} 64k`] },
  { name: 'qcow2 zstd-compressed', blockSize: '1M', build: qcow2From({ compression_type: 'zstd' }, true), change: [...scattered, `write -c -P 0x78 ${4 * MiB} 64k`] },
  { name: 'qcow2 extended L2 (subclusters)', blockSize: '16K', build: qcow2From({ extended_l2: 'on' }), change: scattered },
  {
    name: 'backing chain of depth 3, relative names, raw base',
    blockSize: '64K',
    build: async (d) => {
      await writeFile(join(d, 'base.raw'), await readFile(source));
      await createImage(join(d, 'mid.qcow2'), { format: 'qcow2', backing: 'base.raw', backingFormat: 'raw' });
      await qemuIo(join(d, 'mid.qcow2'), ['write -P 0x44 1M 512k']);
      await createImage(join(d, 'top.qcow2'), { format: 'qcow2', backing: 'mid.qcow2', backingFormat: 'qcow2' });
      return { image: join(d, 'top.qcow2'), format: 'qcow2' };
    },
    change: scattered,
  },
  {
    name: 'backing chain, absolute names, qcow2 base shorter than its overlay',
    blockSize: '1M',
    build: async (d) => {
      await convertImage(source, join(d, 'base.qcow2'), { fromFormat: 'raw', toFormat: 'qcow2' });
      await qemuImg('resize', '-q', '--shrink', join(d, 'base.qcow2'), String(4 * MiB));
      await createImage(join(d, 'top.qcow2'), { format: 'qcow2', backing: join(d, 'base.qcow2'), backingFormat: 'qcow2', size: 10 * MiB + 512 });
      return { image: join(d, 'top.qcow2'), format: 'qcow2' };
    },
    change: [...scattered, `write -P 0x66 ${9 * MiB} 4k`],
  },
];

describe.each(repoKinds)('with a $name repository', (kind) => {
  describe.each(cases)('round trip: $name', (c) => {
    it('restores every version bit-exact and stores only changes', async () => {
      const d = join(dir, kind.name, c.name.replace(/[^a-z0-9]+/gi, '-'));
      await rm(d, { recursive: true, force: true });
      await mkdir(d, { recursive: true });
      const repo = await openTestRepo(kind, join(d, 'repo'));
      const { image, format } = await c.build(d);
      const backup = async () => {
        const r = await runCli(['backup', image, '--disk', 'vm/disk0', '--block-size', c.blockSize, '--json', ...repo.args], { env: repo.env });
        expect(r.code, r.stderr + r.stdout).toBe(0);
        return r.json.disks[0];
      };

      const v1 = await backup();
      await convertToRaw(image, join(d, 'state1.raw'), format);
      await qemuIo(image, c.change, { format });
      const v2 = await backup();
      await convertToRaw(image, join(d, 'state2.raw'), format);
      expect(v2.changedBlocks).toBeGreaterThan(0);
      expect(v2.changedBlocks).toBeLessThan(v2.blocks);
      expect(v2.parentVersion).toBe(v1.version);

      const v3 = await backup();
      expect(v3).toMatchObject({ changedBlocks: 0, newChunks: 0 });

      for (const [v, state] of [[v1, 'state1.raw'], [v2, 'state2.raw']] as const) {
        const out = join(d, `restored-${state}`);
        const r = await runCli(['restore', '--disk', 'vm/disk0', '--version', v.version, '--to', out, ...repo.args], { env: repo.env });
        expect(r.code, r.stderr).toBe(0);
        const expected = await readFile(join(d, state));
        const actual = await readFile(out);
        expect(actual.length).toBe(expected.length);
        expect(actual.equals(expected), `${state} differs`).toBe(true);
      }
      const verify = await runCli(['verify', ...repo.args], { env: repo.env });
      expect(verify.code, verify.stdout + verify.stderr).toBe(0);
      await rm(d, { recursive: true, force: true });
    });
  });

  describe('bad images are refused with a clear error and create no version', () => {
    const refusals: Array<{ name: string; code: string; exit: number; message: RegExp; make(d: string): Promise<string> }> = [
      {
        name: 'encrypted',
        code: 'IMAGE_UNSUPPORTED',
        exit: 6,
        message: /encrypt/i,
        make: async (d) => {
          const p = join(d, 'enc.qcow2');
          await createImage(p, { format: 'qcow2', size: '1M', objects: ['secret,id=sec0,data=abc'], options: { 'encrypt.format': 'luks', 'encrypt.key-secret': 'sec0', 'encrypt.iter-time': 10 } });
          return p;
        },
      },
      {
        name: 'external data file',
        code: 'IMAGE_UNSUPPORTED',
        exit: 6,
        message: /external data file/i,
        make: async (d) => {
          const p = join(d, 'ext.qcow2');
          await createImage(p, { format: 'qcow2', size: '1M', options: { data_file: join(d, 'ext.data') } });
          return p;
        },
      },
      {
        name: 'corrupt bit',
        code: 'IMAGE_CORRUPT',
        exit: 6,
        message: /corrupt/i,
        make: async (d) => {
          const p = join(d, 'corrupt.qcow2');
          await createImage(p, { format: 'qcow2', size: '1M' });
          await patchFile(p, 72, u64be(2n));
          return p;
        },
      },
      {
        name: 'unknown incompatible feature',
        code: 'IMAGE_UNSUPPORTED',
        exit: 6,
        message: /incompatible feature.*(bit )?20/i,
        make: async (d) => {
          const p = join(d, 'unknown.qcow2');
          await createImage(p, { format: 'qcow2', size: '1M' });
          await patchFile(p, 72, u64be(1n << 20n));
          return p;
        },
      },
      {
        name: 'truncated',
        code: 'IMAGE_CORRUPT',
        exit: 6,
        message: /truncat|past the end|end of the file/i,
        make: async (d) => {
          const p = join(d, 'trunc.qcow2');
          await convertImage(source, p, { fromFormat: 'raw', toFormat: 'qcow2' });
          await truncate(p, 300 * KiB);
          return p;
        },
      },
      {
        name: 'L1 table past the end of the file',
        code: 'IMAGE_CORRUPT',
        exit: 6,
        message: /L1/,
        make: async (d) => {
          const p = join(d, 'l1.qcow2');
          await convertImage(source, p, { fromFormat: 'raw', toFormat: 'qcow2' });
          await patchFile(p, 40, u64be(1n << 40n));
          return p;
        },
      },
      {
        name: 'backing loop',
        code: 'BACKING_LOOP',
        exit: 6,
        message: /loop/i,
        make: async (d) => {
          const a = join(d, 'loop-a.qcow2');
          const b = join(d, 'loop-b.qcow2');
          await createImage(b, { format: 'qcow2', size: '1M' });
          await createImage(a, { format: 'qcow2', backing: b, backingFormat: 'qcow2' });
          await qemuImg('rebase', '-u', '-F', 'qcow2', '-b', a, b);
          return a;
        },
      },
    ];

    it.each(refusals)('$name', async (r) => {
      const d = join(dir, kind.name, 'bad');
      await mkdir(d, { recursive: true });
      const image = await r.make(d);
      const repo = await openTestRepo(kind, join(d, `repo-${r.code}-${r.name.replace(/\W+/g, '-')}`));
      const res = await runCli(['backup', image, '--json', ...repo.args], { env: repo.env });
      expect(res.code).toBe(r.exit);
      expect(res.json).toMatchObject({ ok: false, code: r.code });
      expect(res.json.message).toMatch(r.message);
      const text = await runCli(['backup', image, ...repo.args], { env: repo.env });
      expect(text.stderr).toMatch(/^blockrep: error: /);
      expect(text.stderr).not.toMatch(/\n\s+at /); // no stack trace
      const list = await runCli(['list', '--json', ...repo.args], { env: repo.env });
      expect(list.json.disks).toEqual([]);
    });
  });
});
