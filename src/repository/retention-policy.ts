import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';

/**
 * Which versions of a disk to keep: the rules of restic's `forget` (also borg's and Proxmox
 * Backup Server's `prune`), evaluated in UTC.
 *
 * - keepLast N: the N most recent versions.
 * - keepHourly/Daily/Weekly/Monthly/Yearly N: going from the newest version back, the newest
 *   version of each hour/day/ISO week (Monday–Sunday)/month/year, for the N most recent periods
 *   that HAVE a version (empty periods do not count). Each rule counts on its own; a version
 *   kept by several rules is kept once, with all its reasons.
 * - When a rule still has count left after the oldest version, the oldest version is kept for
 *   it too ("oldest daily"), as restic ≥ 0.16 and borg ≥ 1.2 do: a young repository keeps its
 *   longest history.
 * - The latest version is always kept (a backup's parent must survive), whatever the policy.
 * - An empty policy (no rule, or every count 0) is refused: like restic, we never guess that
 *   "no rule" means "delete everything but the latest".
 *
 * Periods are UTC, not local time: a server's retention must not shift or fold an hour twice
 * a year with daylight saving, and clients in several time zones see the same buckets.
 */
const count = z.number().int().nonnegative().max(1_000_000);

export const retentionPolicySchema = z
  .object({
    keepLast: count.optional(),
    keepHourly: count.optional(),
    keepDaily: count.optional(),
    keepWeekly: count.optional(),
    keepMonthly: count.optional(),
    keepYearly: count.optional(),
  })
  .strict();

export type RetentionPolicy = z.infer<typeof retentionPolicySchema>;

export type RetentionRule = 'last' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';

/** The rules in the order reasons are listed, with the policy field each reads. */
export const RETENTION_RULES: ReadonlyArray<{ rule: RetentionRule; field: keyof RetentionPolicy }> = [
  { rule: 'last', field: 'keepLast' },
  { rule: 'hourly', field: 'keepHourly' },
  { rule: 'daily', field: 'keepDaily' },
  { rule: 'weekly', field: 'keepWeekly' },
  { rule: 'monthly', field: 'keepMonthly' },
  { rule: 'yearly', field: 'keepYearly' },
];

export interface RetentionCandidate {
  id: string;
  createdAt: Date;
}

/** Why a version is kept: a rule, `oldest <rule>` (the rule had count left), or `latest`. */
export type KeepReason = RetentionRule | `oldest ${RetentionRule}` | 'latest';

export interface KeptVersion {
  id: string;
  createdAt: Date;
  reasons: KeepReason[];
}

export interface RetentionSelection {
  /** Oldest first. */
  kept: KeptVersion[];
  /** Oldest first. */
  removed: RetentionCandidate[];
}

/** True when the policy has at least one rule with a count above 0. */
export function isEmptyPolicy(policy: RetentionPolicy): boolean {
  return RETENTION_RULES.every(({ field }) => (policy[field] ?? 0) === 0);
}

/** Checks a policy from any source (CLI options, a job config); refuses an empty one. */
export function parseRetentionPolicy(input: unknown): RetentionPolicy {
  const parsed = retentionPolicySchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new BlockrepError('USAGE', `invalid retention policy${issue ? ` (${issue.path.join('.') || 'policy'}: ${issue.message})` : ''}`);
  }
  if (isEmptyPolicy(parsed.data)) {
    throw new BlockrepError('USAGE', 'an empty retention policy would remove every version but the latest; give at least one keep rule above 0 (e.g. --keep-daily 7)');
  }
  return parsed.data;
}

/** The UTC period a time falls in, for each rule (keepLast: every version is its own). */
function periodOf(rule: RetentionRule, t: Date, index: number): string {
  switch (rule) {
    case 'last':
      return `#${index}`;
    case 'hourly':
      return t.toISOString().slice(0, 13); // 2026-11-26T03
    case 'daily':
      return t.toISOString().slice(0, 10);
    case 'weekly':
      return isoWeek(t);
    case 'monthly':
      return t.toISOString().slice(0, 7);
    case 'yearly':
      return t.toISOString().slice(0, 4);
  }
}

/** ISO 8601 week of a UTC time, "2026-W48": weeks start on Monday; week 1 holds the year's first Thursday. */
export function isoWeek(t: Date): string {
  const day = (t.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  const thursday = new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), t.getUTCDate() - day + 3));
  const year = thursday.getUTCFullYear();
  const week = Math.floor((thursday.getTime() - Date.UTC(year, 0, 1)) / (7 * 86_400_000)) + 1;
  return `${year}-W${String(week).padStart(2, '0')}`;
}

/**
 * Splits `versions` into those the policy keeps (with every reason) and those it removes.
 * Pure; the order of the input does not matter. Throws USAGE for an empty policy.
 */
export function selectVersionsToKeep(versions: RetentionCandidate[], policy: RetentionPolicy): RetentionSelection {
  const checked = parseRetentionPolicy(policy);
  // Newest first; equal times by id, so the order (and the result) is deterministic.
  const newestFirst = [...versions].sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  const rules = RETENTION_RULES.map(({ rule, field }) => ({ rule, left: checked[field] ?? 0, last: undefined as string | undefined }));
  const kept: KeptVersion[] = [];
  const removed: RetentionCandidate[] = [];
  newestFirst.forEach((v, index) => {
    const reasons: KeepReason[] = index === 0 ? ['latest'] : [];
    const oldest = index === newestFirst.length - 1;
    for (const r of rules) {
      if (r.left <= 0) continue;
      const period = periodOf(r.rule, v.createdAt, index);
      if (period !== r.last) {
        reasons.push(r.rule);
        r.last = period;
        r.left--;
      } else if (oldest) {
        // The rule had count left and no older version to spend it on.
        reasons.push(`oldest ${r.rule}`);
        r.left--;
      }
    }
    if (reasons.length > 0) kept.push({ id: v.id, createdAt: v.createdAt, reasons });
    else removed.push({ id: v.id, createdAt: v.createdAt });
  });
  return { kept: kept.reverse(), removed: removed.reverse() };
}
