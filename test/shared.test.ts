import { describe, expect, it } from 'vitest';
import { assertDiskId, defaultDiskIdForImage, diskIdFromPathComponent, diskIdProblem, diskIdToPathComponent } from '../src/shared/disk-id.js';
import { parseSize } from '../src/shared/size.js';
import { isVersionId, newVersionId, versionIdTime } from '../src/shared/version-id.js';

describe('disk ids', () => {
  it('accepts the grammar of design.md and nothing else', () => {
    for (const ok of ['vda', 'vm1/vda', 'a.b_c-d/e', 'x'.repeat(200), `${'x/'.repeat(12)}${'y'.repeat(176)}`]) expect(diskIdProblem(ok)).toBeUndefined();
    // Stored as one file name, "/" as %2F: at most 224 bytes, so a lock's name and gc's aside name fit in 255.
    for (const long of [`${'x/'.repeat(13)}${'y'.repeat(174)}`, `${'a/'.repeat(99)}a`]) expect(diskIdProblem(long)).toMatch(/more than 224/);
    for (const bad of ['', '/vda', 'vda/', 'a//b', '../etc', 'a/../b', 'a/./b', '.', 'a b', 'a%2Fb', 'ä', 'x'.repeat(201), 'a\\b']) {
      expect(diskIdProblem(bad), bad).toBeDefined();
      expect(() => assertDiskId(bad)).toThrow(expect.objectContaining({ code: 'INVALID_DISK_ID' }));
    }
  });
  it('maps to one path component and back', () => {
    expect(diskIdToPathComponent('vm1/vda')).toBe('vm1%2Fvda');
    expect(diskIdFromPathComponent('vm1%2Fvda')).toBe('vm1/vda');
    expect(diskIdFromPathComponent('..')).toBeUndefined();
    // A leading ".tmp-" would look like a storage temporary file: its dot is escaped.
    expect(diskIdToPathComponent('.tmp-a/vda')).toBe('%2Etmp-a%2Fvda');
    expect(diskIdFromPathComponent('%2Etmp-a%2Fvda')).toBe('.tmp-a/vda');
    expect(diskIdToPathComponent('.hidden')).toBe('.hidden');
    expect(diskIdFromPathComponent('%2Ehidden')).toBeUndefined();
  });
  it('derives a default from an image path', () => {
    expect(defaultDiskIdForImage('/var/lib/images/web01.qcow2')).toBe('web01');
    expect(defaultDiskIdForImage('disk')).toBe('disk');
    expect(defaultDiskIdForImage('/dev/sdb')).toBe('sdb');
    expect(defaultDiskIdForImage('my disk (1).img')).toBe('my_disk__1_');
  });
});

describe('version ids', () => {
  it('sort by time and are strictly after their parent', () => {
    const a = newVersionId(Date.UTC(2026, 10, 26, 3, 35, 4, 123));
    expect(a).toMatch(/^20261126T033504\.123Z-[0-9a-f]{6}$/);
    expect(isVersionId(a)).toBe(true);
    const b = newVersionId(Date.UTC(2026, 10, 26, 3, 35, 4, 123), a);
    expect(versionIdTime(b)).toBe(versionIdTime(a) + 1);
    expect(b > a).toBe(true);
    expect(isVersionId('latest')).toBe(false);
  });
});

describe('sizes', () => {
  it('parses binary units', () => {
    expect(parseSize('65536')).toBe(65536);
    expect(parseSize('64K')).toBe(65536);
    expect(parseSize('1M')).toBe(1 << 20);
    expect(parseSize('1MiB')).toBe(1 << 20);
    expect(parseSize('4g')).toBe(4 * 1024 ** 3);
    expect(() => parseSize('12Q')).toThrow(expect.objectContaining({ code: 'INVALID_SIZE' }));
    expect(() => parseSize('1.5')).toThrow(expect.objectContaining({ code: 'INVALID_SIZE' }));
  });
});
