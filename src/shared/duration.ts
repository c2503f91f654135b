import { BlockrepError } from './blockrep-error.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Parses "0", "500ms", "90s", "15m", "24h5m", "7d" (units may be combined, largest first) into ms. */
export function parseDuration(text: string, what = 'duration'): number {
  const t = text.trim();
  if (t === '0') return 0;
  const parts = [...t.matchAll(/(\d+)(ms|s|m|h|d|w)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== t) {
    throw new BlockrepError('USAGE', `invalid ${what} ${JSON.stringify(text.slice(0, 80))}: use a number with a unit (ms, s, m, h, d, w), e.g. 24h5m, 90s or 0`);
  }
  let ms = 0;
  for (const [, n, unit] of parts) ms += Number(n) * UNIT_MS[unit!]!;
  if (!Number.isSafeInteger(ms)) throw new BlockrepError('USAGE', `${what} ${JSON.stringify(text.slice(0, 80))} is too long`);
  return ms;
}

/** "1d 0h 5m", "1.5 s", "0 s": for reports. */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(3))} s`;
  const d = Math.floor(ms / 86_400_000);
  const h = Math.floor((ms % 86_400_000) / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const s = Math.round((ms % 60_000) / 1000);
  return [d ? `${d}d` : '', h ? `${h}h` : '', m ? `${m}m` : '', s ? `${s}s` : ''].filter(Boolean).join(' ');
}
