import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { inSample, sampleSeedForDay } from '../../src/app/verify-repository.js';
import { patternBytes } from '../support/qemu-tools.js';
import { openTestRepo, repoKinds } from '../support/repo-kinds.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * Scrub: one byte flipped in one stored chunk, used by block 1 of the first version of a disk
 * only. verify (all of it, and a sample that holds the chunk) names that disk, version and block
 * and exits 4; a sample without it passes; restore of the first version fails loudly and
 * leaves no file, restore of the second (which no longer uses the chunk) is bit-exact.
 */
const BLOCK = 64 * 1024;
const dir = await tempDir('blockrep-scrub-');

it('the default sample windows of successive days tile the chunk ids: 5 % a night checks each chunk once in 20 nights', () => {
  const ids = Array.from({ length: 2000 }, (_, i) => createHash('sha256').update(String(i)).digest('hex'));
  for (const percent of [5, 7, 33]) {
    const nights = Math.ceil(100 / percent);
    const start = Date.UTC(2026, 10, 26, 2);
    const hits = ids.map((id) => Array.from({ length: nights }, (_, d) => inSample(id, percent, sampleSeedForDay(percent, start + d * 86_400_000))).filter(Boolean).length);
    expect(Math.min(...hits)).toBeGreaterThanOrEqual(1);
    if (100 % percent === 0) expect(Math.max(...hits)).toBe(1);
  }
});

describe.each(repoKinds)('scrub with a $name repository', (kind) => {
  it('verify names the damaged disk, version and block; restore never serves it', async () => {
    const repo = await openTestRepo(kind, join(dir, `repo-${kind.name}`));
    const cli = (args: string[]) => runCli([...args, ...repo.args], { env: repo.env });
    const image = join(dir, `${kind.name}-disk.img`);
    const blocks = Array.from({ length: 8 }, (_, b) => patternBytes(BLOCK, 100 + b)); // incompressible
    const v1Image = Buffer.concat(blocks);
    await writeFile(image, v1Image);
    const first = await cli(['backup', image, '--disk', 'web', '--block-size', '64K', '--json']);
    expect(first.code, first.stderr).toBe(0);
    const v2Image = Buffer.concat([blocks[0]!, patternBytes(BLOCK, 999), ...blocks.slice(2)]);
    await writeFile(image, v2Image);
    const second = await cli(['backup', image, '--disk', 'web', '--json']);
    expect(second.code, second.stderr).toBe(0);
    const [v1, v2] = [first.json.disks[0].version as string, second.json.disks[0].version as string];

    const damaged = createHash('sha256').update(blocks[1]!).digest('hex');
    const path = join(repo.root, 'chunks', damaged.slice(0, 2), damaged);
    const blob = await readFile(path);
    blob[Math.floor(blob.length / 2)]! ^= 0x01;
    await writeFile(path, blob);

    // Seeds whose 25 % window holds the damaged chunk, and one whose window does not.
    const hit = [...Array(64).keys()].map((i) => i * 0x4000000).find((s) => inSample(damaged, 25, s))!;
    const miss = [...Array(64).keys()].map((i) => i * 0x4000000).find((s) => !inSample(damaged, 25, s))!;
    const [text, sampledHit, sampledMiss, restoreV1, restoreV2, badSample] = await Promise.all([
      cli(['verify']),
      cli(['verify', '--sample', '25', '--seed', String(hit), '--json']),
      cli(['verify', '--sample', '25%', '--seed', String(miss), '--json']),
      cli(['restore', '--disk', 'web', '--version', v1, '--to', join(dir, `${kind.name}-v1.raw`)]),
      cli(['restore', '--disk', 'web', '--version', v2, '--to', join(dir, `${kind.name}-v2.raw`)]),
      cli(['verify', '--sample', '0']),
    ]);

    const all = await cli(['verify', '--sample', '100', '--json']);
    expect(all.json).toMatchObject({ ok: false, chunksChecked: 9 });
    const damage = [{ disk: 'web', version: v1, block: 1, chunk: damaged, code: 'CHUNK_CORRUPT', problem: expect.any(String) }];
    expect(text.code).toBe(4);
    expect(text.stdout).toContain(`DAMAGED disk web version ${v1} block 1:`);
    expect(text.stdout).not.toContain(v2);

    expect(sampledHit.code).toBe(4);
    expect(sampledHit.json).toMatchObject({ ok: false, code: 'VERIFY_FAILED', versions: 2 });
    expect(sampledHit.json.damage).toEqual(damage);
    expect(sampledHit.json.sample).toEqual({ percent: 25, seed: hit });
    expect(sampledMiss.code, sampledMiss.stdout).toBe(0);
    expect(sampledMiss.json.chunksChecked).toBeLessThan(9);
    // Every manifest is still read, whichever chunks the seed picks.
    expect(sampledMiss.json.versions).toBe(2);

    expect(restoreV1.code).toBe(4);
    expect(restoreV1.stderr).toMatch(new RegExp(`blockrep: error: .*(${damaged}|block 1)`));
    expect((await readdir(dir)).filter((f) => f.startsWith(`${kind.name}-v1.raw`))).toEqual([]);
    expect(restoreV2.code, restoreV2.stderr).toBe(0);
    expect((await readFile(join(dir, `${kind.name}-v2.raw`))).equals(v2Image)).toBe(true);

    // Bad --sample values are usage errors.
    expect(badSample.code).toBe(2);
  });
});
