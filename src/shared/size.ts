import { BlockrepError } from './blockrep-error.js';

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Parses "65536", "64K", "64KiB", "1M", "1MB" (binary units, as dd and qemu-img read them). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new BlockrepError('INVALID_SIZE', `invalid ${what} ${JSON.stringify(text)}: use a number with an optional K, M, G or T suffix, e.g. 1M`);
  const value = Number(m[1]) * (UNITS[(m[2] ?? '').toLowerCase()] ?? 1);
  if (!Number.isSafeInteger(value)) throw new BlockrepError('INVALID_SIZE', `invalid ${what} ${JSON.stringify(text)}: not a whole number of bytes`);
  return value;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
