import { randomBytes } from 'node:crypto';
import { BlockrepError } from './blockrep-error.js';

/**
 * Version ids sort by creation time as plain strings: a UTC timestamp with milliseconds plus a
 * short random suffix, e.g. `20261126T033504.123Z-3fa9c1`.
 */
const VERSION_ID = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z-[0-9a-f]{6}$/;

export function isVersionId(s: string): boolean {
  return VERSION_ID.test(s);
}

export function assertVersionId(s: string): string {
  if (!isVersionId(s)) {
    throw new BlockrepError('INVALID_VERSION_ID', `invalid version id ${JSON.stringify(s.slice(0, 80))}: expected the form 20261126T033504.123Z-3fa9c1, or "latest"`);
  }
  return s;
}

export function versionIdTime(id: string): number {
  const m = VERSION_ID.exec(id);
  if (!m) throw new BlockrepError('INVALID_VERSION_ID', `invalid version id ${JSON.stringify(id)}`);
  const [, y, mo, d, h, mi, s, ms] = m;
  return Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), Number(ms));
}

/** A new id, strictly later than `after` (so a parent always sorts before its child). */
export function newVersionId(now: number = Date.now(), after?: string): string {
  const t = after === undefined ? now : Math.max(now, versionIdTime(after) + 1);
  const iso = new Date(t).toISOString(); // 2026-11-26T03:35:04.123Z
  const stamp = iso.replace(/[-:]/g, '');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}
