import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { ManualClock } from '../../src/shared/clock.js';
import { describeBackendConformance } from './backend-conformance.js';

describeBackendConformance('MemoryBackend', async () => {
  const clock = new ManualClock();
  const backend = new MemoryBackend({ clock });
  return { backend, clock, close: () => backend.close() };
});

describe('MemoryBackend beyond the shared suite', () => {
  it('ages objects by its clock: objectAgeMs follows it, a write or touch makes an object new again', async () => {
    const clock = new ManualClock();
    const backend = new MemoryBackend({ clock });
    await backend.write('locks/a.lock', Buffer.from('x'));
    expect(await backend.objectAgeMs('locks/a.lock')).toBe(0);
    await clock.advance(1500);
    expect(await backend.objectAgeMs('locks/a.lock')).toBe(1500);
    expect(await backend.sizes(['locks/a.lock'], { touch: true })).toEqual([1]);
    expect(await backend.objectAgeMs('locks/a.lock')).toBe(0);
    // A wall clock stepped back makes the object fresh, never "from the future".
    clock.stepWall(-10_000);
    expect(await backend.objectAgeMs('locks/a.lock')).toBe(0);
    expect(await backend.objectAgeMs('locks/missing.lock')).toBeUndefined();
  });

  it('hands out copies: changing what was read or written does not change what is stored', async () => {
    const backend = new MemoryBackend();
    const data = Buffer.from('stored');
    await backend.write('locks/b.lock', data);
    data.fill(0);
    const read = await backend.read('locks/b.lock');
    read.fill(1);
    expect((await backend.read('locks/b.lock')).toString()).toBe('stored');
  });

  it('refuses keys a directory would refuse', async () => {
    const backend = new MemoryBackend();
    for (const key of ['../x', 'a//b', 'chunks/./x', '/abs', 'a b']) {
      await expect(backend.write(key, Buffer.from('x'))).rejects.toMatchObject({ code: 'INTERNAL' });
    }
  });
});
