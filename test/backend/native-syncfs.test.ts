import { open } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { loadSyncfs, syncfsReportsErrors } from '../../src/backend/local/native-syncfs.js';
import { tempDir } from '../support/temp-dir.js';

describe('syncfs from the native addon', () => {
  it('is loaded here (the addon is built by npm ci), syncs a real file system and rejects a bad descriptor', async () => {
    const syncfs = loadSyncfs();
    expect(syncfs).not.toBeNull();
    const dir = await tempDir('blockrep-syncfs-');
    const fh = await open(dir, 'r');
    try {
      await expect(syncfs!(fh.fd)).resolves.toBeUndefined();
    } finally {
      await fh.close();
    }
    await expect(syncfs!(1 << 20)).rejects.toMatchObject({ code: 'EBADF', syscall: 'syncfs' });
    expect(() => (syncfs as unknown as (x: string) => unknown)('x')).toThrow(TypeError);
  });

  it('is used only where syncfs reports write-back errors: Linux 5.8 and later', () => {
    expect(syncfsReportsErrors('5.7.19')).toBe(false);
    expect(syncfsReportsErrors('4.19.0-25-amd64')).toBe(false);
    expect(syncfsReportsErrors('5.8.0')).toBe(true);
    expect(syncfsReportsErrors('6.1.0-13-amd64')).toBe(true);
    expect(syncfsReportsErrors('10.0')).toBe(true);
    expect(syncfsReportsErrors('weird')).toBe(false);
  });
});
