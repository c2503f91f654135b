import { describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backend/backend.js';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { DiskLock } from '../../src/repository/disk-lock.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { ManualClock } from '../../src/shared/clock.js';

/**
 * The lease logic of disk locks (disk-lock.ts), with time in the test's hands: an in-memory
 * repository whose modification times and the holders' renewal timers follow one ManualClock.
 * Nothing sleeps; each step moves the clock to exactly where the rule is decided. The same
 * rules against a directory and a real server: test/network-faults/disk-lock-lease.test.ts.
 */
const KEY = 'locks/vm%2Fvda.lock';

interface Partition {
  /** The backend as the holder sees it: every renewal fails while `down`. */
  backend: Backend;
  down: boolean;
  /** Conditional replacements tried through it (renewals, and the release). */
  attempts: number;
}

/** A holder's own view of the repository, whose link can be cut. */
function partitioned(inner: MemoryBackend): Partition {
  const p: Partition = { backend: inner, down: false, attempts: 0 };
  p.backend = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'replaceIfMatch') {
        return async (key: string, tag: string, data: Uint8Array | null) => {
          p.attempts++;
          if (p.down) throw new BlockrepError('UNAVAILABLE', 'the link is down');
          return target.replaceIfMatch(key, tag, data);
        };
      }
      const value = Reflect.get(target, prop) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return p;
}

function setup(): { clock: ManualClock; storage: MemoryBackend } {
  const clock = new ManualClock();
  return { clock, storage: new MemoryBackend({ clock }) };
}

describe('disk lock lease, on a manual clock', () => {
  it('renews every lease/10, and a renewing holder keeps its lock for many leases', async () => {
    const { clock, storage } = setup();
    const holder = partitioned(storage);
    const lock = await DiskLock.acquire(holder.backend, 'vm/vda', 'backup', { leaseMs: 1000, clock });
    await clock.advance(99);
    expect(holder.attempts).toBe(0);
    await clock.advance(1);
    expect(holder.attempts).toBe(1);
    await clock.advance(900);
    expect(holder.attempts).toBe(10);
    for (let i = 0; i < 20; i++) {
      await clock.advance(500); // half a lease at a time: ten leases in all
      await expect(DiskLock.acquire(storage, 'vm/vda', 'backup', { clock })).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    }
    expect(await storage.objectAgeMs(KEY)).toBeLessThan(100);
    expect(JSON.parse((await storage.read(KEY)).toString())).toMatchObject({ renewedAt: new Date(clock.now()).toISOString(), leaseMs: 1000 });
    await lock.assertHeld();
    await lock.release();
    expect(await storage.size(KEY)).toBeUndefined();
    // Released: no timer is left to renew it.
    expect(clock.pendingTimers).toBe(0);
    const attempts = holder.attempts;
    await clock.advance(5000);
    expect(holder.attempts).toBe(attempts);
  });

  it('a holder that cannot renew keeps its lock for exactly its lease, then a contender takes it over', async () => {
    const { clock, storage } = setup();
    const holder = partitioned(storage);
    const lock = await DiskLock.acquire(holder.backend, 'vm/vda', 'backup', { leaseMs: 1000, clock });
    const acquiredAt = clock.now();
    holder.down = true;
    await clock.advance(1000);
    expect(holder.attempts).toBeGreaterThanOrEqual(9); // each renewal failed, and was tried again
    // Age 1000 ms: not past the lease yet.
    const refused = DiskLock.acquire(storage, 'vm/vda', 'backup', { clock });
    await expect(refused).rejects.toMatchObject({ code: 'REPO_LOCKED', details: { lockAgeMs: 1000 } });
    expect(((await refused.catch((e: Error) => e)) as Error).message).toContain('in about 0.0 s');
    await clock.advance(1);
    const successor = await DiskLock.acquire(storage, 'vm/vda', 'backup', { leaseMs: 1000, clock });
    expect(clock.now() - acquiredAt).toBe(1001);
    // The link comes back: the next renewal finds the successor's lock and gives up.
    holder.down = false;
    const lost = lock.whenLost();
    await clock.advance(100);
    await expect(lost).rejects.toMatchObject({ code: 'LOCK_LOST', message: expect.stringContaining('last renewal failure: the link is down') });
    await expect(lock.assertHeld()).rejects.toMatchObject({ code: 'LOCK_LOST' });
    expect(() => lock.throwIfLost()).toThrow(expect.objectContaining({ code: 'LOCK_LOST' }));
    const theirs = await storage.read(KEY);
    await lock.release();
    expect((await storage.read(KEY)).equals(theirs)).toBe(true);
    await successor.assertHeld();
    await successor.release();
    expect(await storage.size(KEY)).toBeUndefined();
  });

  it('a renewal whose answer was lost is recognised as the holder\'s own on the next one', async () => {
    const { clock, storage } = setup();
    let loseAnswer = false;
    const flaky = new Proxy(storage, {
      get(target, prop) {
        if (prop === 'replaceIfMatch') {
          return async (key: string, tag: string, data: Uint8Array | null) => {
            const done = await target.replaceIfMatch(key, tag, data);
            if (loseAnswer) {
              loseAnswer = false;
              throw new BlockrepError('UNAVAILABLE', 'the answer was lost');
            }
            return done;
          };
        }
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const lock = await DiskLock.acquire(flaky, 'vm/vda', 'backup', { leaseMs: 1000, clock });
    loseAnswer = true;
    await clock.advance(100); // stored, but the holder does not know it
    const stored = JSON.parse((await storage.read(KEY)).toString());
    expect(stored.renewedAt).toBe(new Date(clock.now()).toISOString());
    await clock.advance(100);
    expect(JSON.parse((await storage.read(KEY)).toString()).renewedAt).toBe(new Date(clock.now()).toISOString());
    await lock.assertHeld();
    await lock.release();
    expect(await storage.size(KEY)).toBeUndefined();
  });

  it('without a storage clock, judges the lease by the holder\'s renewal time against its own clock', async () => {
    const { clock, storage } = setup();
    // A backend that cannot tell an object's age (objectAgeMs absent).
    const ageless = new Proxy(storage, {
      get(target, prop) {
        if (prop === 'objectAgeMs') return undefined;
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const remote = { pid: 4242, host: 'far-away-host', purpose: 'backup', lockId: 'f'.repeat(24), leaseMs: 1000 };
    const at = new Date(clock.now()).toISOString();
    await storage.write(KEY, Buffer.from(JSON.stringify({ ...remote, createdAt: at, renewedAt: at })));
    await clock.advance(1000);
    await expect(DiskLock.acquire(ageless, 'vm/vda', 'backup', { clock })).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    await clock.advance(1);
    const lock = await DiskLock.acquire(ageless, 'vm/vda', 'backup', { clock });
    expect(JSON.parse((await storage.read(KEY)).toString())).toMatchObject({ pid: process.pid, createdAt: new Date(clock.now()).toISOString() });
    await lock.release();
  });

  it('judges by the storage\'s clock, not the holder\'s timestamps, when the storage can tell', async () => {
    const { clock, storage } = setup();
    // Timestamps a century ahead, written 2 s ago by the storage's clock: expired.
    const future = '2126-01-01T00:00:00.000Z';
    await storage.write(KEY, Buffer.from(JSON.stringify({ pid: 4242, host: 'far-away-host', purpose: 'backup', lockId: 'f'.repeat(24), leaseMs: 1000, createdAt: future, renewedAt: future })));
    await clock.advance(2000);
    const lock = await DiskLock.acquire(storage, 'vm/vda', 'backup', { clock });
    await lock.release();
    // A wall clock stepped back by an hour leaves a fresh lock fresh (an age is never negative).
    const holder = await DiskLock.acquire(storage, 'vm/vda', 'backup', { leaseMs: 1000, clock });
    clock.stepWall(-3600_000);
    await expect(DiskLock.acquire(storage, 'vm/vda', 'backup', { clock })).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    await holder.release();
  });
});
