import { describe, expect, it } from 'vitest';
import { isoWeek, retentionPolicySchema, selectVersionsToKeep, type RetentionCandidate } from '../../src/repository/retention-policy.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';

/**
 * The kept sets below are worked out by hand from a calendar (2025-12-31 is a Wednesday, so
 * 2025-12-28 is a Sunday and ISO week 2026-W01 runs Mon 2025-12-29 – Sun 2026-01-04), not by
 * running the algorithm: they are what restic's `forget` documents.
 */
const DAY = 86_400_000;

/** A version every night at 02:00 UTC from `from` to `to` (inclusive), id "n-YYYY-MM-DD". */
function nightly(from: string, to: string, skip: string[] = []): RetentionCandidate[] {
  const out: RetentionCandidate[] = [];
  for (let t = Date.parse(`${from}T02:00:00Z`); t <= Date.parse(`${to}T02:00:00Z`); t += DAY) {
    const day = new Date(t).toISOString().slice(0, 10);
    if (!skip.includes(day)) out.push({ id: `n-${day}`, createdAt: new Date(t) });
  }
  return out;
}

const year2025 = nightly('2025-01-01', '2025-12-31');

function keptMap(versions: RetentionCandidate[], policy: Parameters<typeof selectVersionsToKeep>[1]): Record<string, string[]> {
  const { kept, removed } = selectVersionsToKeep(versions, policy);
  expect(kept.length + removed.length).toBe(versions.length);
  return Object.fromEntries(kept.map((k) => [k.id, k.reasons]));
}

describe('retention policy (restic forget semantics, UTC)', () => {
  it('a year of nightly versions: last 3, daily 7, weekly 4, monthly 12, yearly 3', () => {
    expect(year2025).toHaveLength(365);
    const kept = keptMap(year2025, { keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 12, keepYearly: 3 });
    expect(kept).toEqual({
      'n-2025-12-31': ['latest', 'last', 'daily', 'weekly', 'monthly', 'yearly'],
      'n-2025-12-30': ['last', 'daily'],
      'n-2025-12-29': ['last', 'daily'],
      'n-2025-12-28': ['daily', 'weekly'], // Sunday: the newest of ISO week 2025-W52
      'n-2025-12-27': ['daily'],
      'n-2025-12-26': ['daily'],
      'n-2025-12-25': ['daily'],
      'n-2025-12-21': ['weekly'],
      'n-2025-12-14': ['weekly'],
      'n-2025-11-30': ['monthly'],
      'n-2025-10-31': ['monthly'],
      'n-2025-09-30': ['monthly'],
      'n-2025-08-31': ['monthly'],
      'n-2025-07-31': ['monthly'],
      'n-2025-06-30': ['monthly'],
      'n-2025-05-31': ['monthly'],
      'n-2025-04-30': ['monthly'],
      'n-2025-03-31': ['monthly'],
      'n-2025-02-28': ['monthly'],
      'n-2025-01-31': ['monthly'],
      // Only one year has versions; keepYearly had 2 left: the oldest version is kept for it.
      'n-2025-01-01': ['oldest yearly'],
    });
  });

  it('the result does not depend on the input order, and comes oldest first', () => {
    const shuffled = [...year2025].sort((a, b) => (a.id.charCodeAt(8) * 31 + a.id.charCodeAt(11)) % 7 - ((b.id.charCodeAt(8) * 31 + b.id.charCodeAt(11)) % 7));
    const a = selectVersionsToKeep(year2025, { keepWeekly: 5, keepMonthly: 3 });
    const b = selectVersionsToKeep(shuffled, { keepWeekly: 5, keepMonthly: 3 });
    expect(b).toEqual(a);
    expect(a.kept.map((k) => k.id)).toEqual(['n-2025-10-31', 'n-2025-11-30', 'n-2025-12-07', 'n-2025-12-14', 'n-2025-12-21', 'n-2025-12-28', 'n-2025-12-31']);
    expect(a.removed[0]!.id).toBe('n-2025-01-01');
  });

  it('periods without a version do not count (daily counts days that have one)', () => {
    const gappy = nightly('2025-12-15', '2025-12-31', ['2025-12-21', '2025-12-22', '2025-12-23', '2025-12-24', '2025-12-25', '2025-12-26', '2025-12-27', '2025-12-29', '2025-12-30']);
    // Left: 15..20, 28, 31.
    expect(Object.keys(keptMap(gappy, { keepDaily: 3 }))).toEqual(['n-2025-12-20', 'n-2025-12-28', 'n-2025-12-31']);
    // Weekly: 2026-W01 (31), 2025-W52 (28), W51 (20 is Saturday, the newest of 15..20).
    expect(Object.keys(keptMap(gappy, { keepWeekly: 3 }))).toEqual(['n-2025-12-20', 'n-2025-12-28', 'n-2025-12-31']);
  });

  it('several versions in one day: daily keeps the newest of each day, last keeps each', () => {
    const versions = [
      ...nightly('2025-12-29', '2025-12-31'),
      { id: 'x-2025-12-31T14', createdAt: new Date('2025-12-31T14:00:00Z') },
      { id: 'x-2025-12-31T13', createdAt: new Date('2025-12-31T13:59:59Z') },
    ];
    expect(keptMap(versions, { keepDaily: 2 })).toEqual({ 'x-2025-12-31T14': ['latest', 'daily'], 'n-2025-12-30': ['daily'] });
    expect(keptMap(versions, { keepLast: 2 })).toEqual({ 'x-2025-12-31T14': ['latest', 'last'], 'x-2025-12-31T13': ['last'] });
    // Hourly: 14h, 13h, and 02h of the 31st are three hours; then the 30th.
    expect(Object.keys(keptMap(versions, { keepHourly: 4 }))).toEqual(['n-2025-12-30', 'n-2025-12-31', 'x-2025-12-31T13', 'x-2025-12-31T14']);
  });

  it('a rule with count left keeps the oldest version too; the latest is always kept', () => {
    const monthly = keptMap(year2025, { keepMonthly: 24 });
    expect(Object.keys(monthly)).toHaveLength(13);
    expect(monthly['n-2025-01-01']).toEqual(['oldest monthly']);
    expect(monthly['n-2025-01-31']).toEqual(['monthly']);
    expect(keptMap(year2025, { keepYearly: 1 })).toEqual({ 'n-2025-12-31': ['latest', 'yearly'] });
    expect(keptMap(year2025, { keepLast: 0, keepHourly: 1 })).toEqual({ 'n-2025-12-31': ['latest', 'hourly'] });
    expect(keptMap([{ id: 'only', createdAt: new Date('2025-06-01T00:00:00Z') }], { keepDaily: 7 })).toEqual({ only: ['latest', 'daily'] });
  });

  it('weeks are ISO weeks in UTC, across year ends', () => {
    expect(isoWeek(new Date('2025-12-28T23:59:59Z'))).toBe('2025-W52');
    expect(isoWeek(new Date('2025-12-29T00:00:00Z'))).toBe('2026-W01');
    expect(isoWeek(new Date('2021-01-03T12:00:00Z'))).toBe('2020-W53');
    expect(isoWeek(new Date('2024-12-30T12:00:00Z'))).toBe('2025-W01');
    expect(isoWeek(new Date('2026-11-26T03:00:00Z'))).toBe('2026-W48');
    // A version at 23:30 UTC on Sunday belongs to that Sunday's week, whatever the local zone.
    const v = [
      { id: 'sun', createdAt: new Date('2025-12-28T23:30:00Z') },
      { id: 'mon', createdAt: new Date('2025-12-29T00:30:00Z') },
    ];
    expect(Object.keys(keptMap(v, { keepWeekly: 1 }))).toEqual(['mon']);
    expect(Object.keys(keptMap(v, { keepWeekly: 2 }))).toEqual(['sun', 'mon']);
  });

  it('an empty policy, a negative count or an unknown rule is refused with a usage error', () => {
    for (const policy of [{}, { keepLast: 0, keepDaily: 0 }]) {
      let caught: unknown;
      try {
        selectVersionsToKeep(year2025, policy);
      } catch (err) {
        caught = err;
      }
      expect(isBlockrepError(caught) && caught.code).toBe('USAGE');
    }
    expect(() => selectVersionsToKeep(year2025, { keepDaily: -1 })).toThrow(/invalid retention policy/);
    expect(retentionPolicySchema.safeParse({ keepDaily: 1, keepWithin: '1d' }).success).toBe(false);
    expect(retentionPolicySchema.safeParse({ keepDaily: 1.5 }).success).toBe(false);
  });
});
