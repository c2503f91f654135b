import { afterAll, describe, expect, it } from 'vitest';
import { collectGarbage, DEFAULT_GC_GRACE_MS, GC_CLOCK_SLACK_MS } from '../../src/app/collect-garbage.js';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { encodeChunk, type EncodedChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { ManualClock } from '../../src/shared/clock.js';
import { disposeTestManifests, testManifest } from '../support/test-manifests.js';

/**
 * The gc cutoff (collect-garbage.ts) on an in-memory repository whose modification times and
 * whose "now" follow one ManualClock: which chunks are old enough to go is decided to the
 * millisecond, without sleeping or back-dating files. Against a directory and a real server,
 * with a concurrent backup in another process: test/cli/prune-gc.test.ts.
 */
const MIN = 60_000;
let seed = 0;
const chunk = (): EncodedChunk => encodeChunk(Buffer.from(`chunk ${seed++} `.repeat(100)));
const V1 = '20261126T033504.123Z-aaaaaa';

afterAll(async () => {
  await disposeTestManifests();
});

async function setup(): Promise<{ clock: ManualClock; storage: MemoryBackend; repo: Repository }> {
  const clock = new ManualClock(Date.UTC(2026, 10, 26, 3, 0, 0));
  const storage = new MemoryBackend({ clock });
  return { clock, storage, repo: await Repository.open(storage, { create: true, clock }) };
}

describe('gc cutoff, on a manual clock', () => {
  it('removes unused chunks written or touched before now − grace − slack, keeps the rest, and says why', async () => {
    const { clock, repo } = await setup();
    const [used, old, justBefore, edge, touched] = [chunk(), chunk(), chunk(), chunk(), chunk()];
    for (const c of [used, old, touched]) await repo.putChunk(c);
    await repo.publishVersion('vm/vda', V1, await testManifest('vm/vda', V1, [used.id, undefined]));
    // The cutoff will fall 10 minutes on (gc with no grace, a slack after that): one chunk is
    // written a millisecond before it, one exactly at it, and an old one is touched at it
    // (a dedup hit, as a backup makes).
    await clock.advance(10 * MIN - 1);
    await repo.putChunk(justBefore);
    await clock.advance(1);
    const cutoff = clock.now();
    await repo.putChunk(edge);
    expect(await repo.hasChunks([touched.id])).toEqual([true]);
    await clock.advance(GC_CLOCK_SLACK_MS);
    const startedAt = clock.now();

    const dry = await collectGarbage(repo, { graceMs: 0, dryRun: true });
    expect(dry).toMatchObject({ dryRun: true, chunksRemoved: 2, chunksKeptYoung: 2, chunksReferenced: 1 });
    expect(await repo.hasChunks([old.id, justBefore.id], { touch: false })).toEqual([true, true]);

    const report = await collectGarbage(repo, { graceMs: 0 });
    expect(report).toMatchObject({
      ok: true,
      startedAt: new Date(startedAt).toISOString(),
      cutoff: new Date(cutoff).toISOString(),
      graceMs: 0,
      disks: 1,
      versions: 1,
      chunksReferenced: 1,
      chunksRemoved: 2,
      bytesRemoved: old.blob.byteLength + justBefore.blob.byteLength,
      chunksKeptYoung: 2,
      bytesKeptYoung: edge.blob.byteLength + touched.blob.byteLength,
      durationMs: 0, // no time passed on the clock
    });
    expect(report.cutoffHeldBy).toBeUndefined();
    expect(await repo.hasChunks([used.id, old.id, justBefore.id, edge.id, touched.id], { touch: false })).toEqual([true, false, false, true, true]);
  });

  it('the default grace keeps a day and five minutes of unused chunks, to the millisecond', async () => {
    const { clock, repo } = await setup();
    const c = chunk();
    await repo.putChunk(c);
    const written = clock.now();
    // gc at written + grace + slack: the cutoff is exactly the write, which is not before it.
    await clock.advance(DEFAULT_GC_GRACE_MS + GC_CLOCK_SLACK_MS);
    const kept = await collectGarbage(repo);
    expect(kept).toMatchObject({ cutoff: new Date(written).toISOString(), chunksRemoved: 0, chunksKeptYoung: 1 });
    await clock.advance(1);
    expect(await collectGarbage(repo)).toMatchObject({ cutoff: new Date(written + 1).toISOString(), chunksRemoved: 1, chunksKeptYoung: 0 });
  });

  it('a disk lock taken before the cutoff moves it back to the lock\'s start: a running backup\'s chunks stay', async () => {
    const { clock, repo } = await setup();
    const before = chunk();
    await repo.putChunk(before);
    await clock.advance(MIN);
    const lock = await repo.lockDisk('vm/vdb', 'backup');
    const lockedAt = clock.now();
    // The backup stores a chunk for its version, not yet published, and runs on for an hour,
    // renewing its lock (every 30 s by the default lease) all along.
    await clock.advance(MIN);
    const pending = chunk();
    await repo.putChunk(pending);
    await clock.advance(60 * MIN);

    const report = await collectGarbage(repo, { graceMs: 5 * MIN });
    expect(report.cutoffHeldBy).toEqual({ lock: 'locks/vm%2Fvdb.lock', since: new Date(lockedAt).toISOString(), purpose: 'backup' });
    expect(report.cutoff).toBe(new Date(lockedAt - GC_CLOCK_SLACK_MS).toISOString());
    expect(report).toMatchObject({ chunksRemoved: 1, chunksKeptYoung: 1 });
    expect(await repo.hasChunks([before.id, pending.id], { touch: false })).toEqual([false, true]);

    // Released (published or failed): the next gc goes by the grace again.
    await lock.release();
    const after = await collectGarbage(repo, { graceMs: 5 * MIN });
    expect(after.cutoffHeldBy).toBeUndefined();
    expect(after).toMatchObject({ chunksRemoved: 1, cutoff: new Date(clock.now() - 5 * MIN - GC_CLOCK_SLACK_MS).toISOString() });
  });

  it('a chunk touched between the listing and its removal is kept (removeIfOlder decides at the moment of removal)', async () => {
    const { clock, storage, repo } = await setup();
    const c = chunk();
    await repo.putChunk(c);
    await clock.advance(10 * MIN);
    // A backup's dedup hit lands while gc is sweeping: right before gc removes the chunk.
    const racing = new Proxy(storage, {
      get(target, prop) {
        if (prop === 'removeIfOlder') {
          return async (key: string, cutoffMs: number) => {
            await target.sizes([key], { touch: true });
            return target.removeIfOlder(key, cutoffMs);
          };
        }
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const report = await collectGarbage(await Repository.open(racing, { clock }), { graceMs: 0 });
    expect(report).toMatchObject({ chunksRemoved: 0, chunksKeptYoung: 1 });
    expect(await repo.hasChunks([c.id], { touch: false })).toEqual([true]);
  });
});
