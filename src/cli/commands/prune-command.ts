import type { Command } from 'commander';
import { pruneVersions } from '../../app/index.js';
import { openRepository, parseRetentionPolicy, type RetentionPolicy } from '../../repository/index.js';
import { assertDiskId } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_LOCKED, EXIT_OK } from '../exit-codes.js';
import { pruneText } from '../output/prune-text.js';
import { parseIntOption } from '../parse-options.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';

interface PruneCliOptions extends RepositoryCliOptions {
  disk?: string[];
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  dryRun?: boolean;
  json?: boolean;
}

const MAX_KEEP = 1_000_000;

export function registerPrune(program: Command): void {
  addRepositoryOptions(program.command('prune'))
    .description(
      'remove the versions a retention policy does not keep (restic/borg rules, in UTC; the latest version is always kept); their chunks are freed by gc',
    )
    .option('--disk <id>', 'only this disk (repeat for several; default: every disk)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--keep-last <n>', 'keep the n most recent versions')
    .option('--keep-hourly <n>', 'keep the newest version of each of the last n hours that have one')
    .option('--keep-daily <n>', 'keep the newest version of each of the last n days that have one')
    .option('--keep-weekly <n>', 'keep the newest version of each of the last n ISO weeks that have one')
    .option('--keep-monthly <n>', 'keep the newest version of each of the last n months that have one')
    .option('--keep-yearly <n>', 'keep the newest version of each of the last n years that have one')
    .option('--dry-run', 'show what would be removed; remove nothing')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: PruneCliOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const policy = policyFrom(opts);
        const disks = opts.disk?.map((d) => assertDiskId(d));
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts));
        try {
          const report = await pruneVersions(repo, { policy, ...(disks ? { disks } : {}), dryRun: Boolean(opts.dryRun) });
          const skipped = report.disks.filter((d) => d.skipped);
          return {
            // A disk left alone because a backup holds its lock: the others were pruned; say so in the exit code.
            exitCode: skipped.length > 0 ? EXIT_LOCKED : EXIT_OK,
            json: { ...report, ...(skipped.length > 0 ? { code: 'REPO_LOCKED', message: `${skipped.length} disk(s) locked, left alone: ${skipped.map((d) => d.disk).join(', ')}` } : {}) },
            text: pruneText(report),
          };
        } finally {
          await repo.backend.close();
        }
      });
    });
}

function policyFrom(opts: PruneCliOptions): RetentionPolicy {
  const policy: Record<string, number> = {};
  const fields = [
    ['keepLast', opts.keepLast, '--keep-last'],
    ['keepHourly', opts.keepHourly, '--keep-hourly'],
    ['keepDaily', opts.keepDaily, '--keep-daily'],
    ['keepWeekly', opts.keepWeekly, '--keep-weekly'],
    ['keepMonthly', opts.keepMonthly, '--keep-monthly'],
    ['keepYearly', opts.keepYearly, '--keep-yearly'],
  ] as const;
  for (const [field, value, name] of fields) if (value !== undefined) policy[field] = parseIntOption(value, name, 0, MAX_KEEP);
  return parseRetentionPolicy(policy);
}
