import type { Command } from 'commander';
import { collectGarbage, DEFAULT_GC_GRACE_MS } from '../../app/index.js';
import { openRepository } from '../../repository/index.js';
import { formatDuration, parseDuration } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { gcText } from '../output/gc-text.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';

interface GcCliOptions extends RepositoryCliOptions {
  grace?: string;
  dryRun?: boolean;
  json?: boolean;
}

export function registerGc(program: Command): void {
  addRepositoryOptions(program.command('gc'))
    .description('remove the chunks no version uses (safe while backups run: recent chunks are kept for a grace window); over HTTP needs read and admin on "*"')
    .option('--grace <duration>', `keep unused chunks written or touched within this long (e.g. 24h5m, 90s, 0; default ${formatDuration(DEFAULT_GC_GRACE_MS)})`)
    .option('--dry-run', 'show what would be removed; remove nothing')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: GcCliOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const graceMs = opts.grace === undefined ? undefined : parseDuration(opts.grace, '--grace');
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts));
        try {
          const report = await collectGarbage(repo, { ...(graceMs !== undefined ? { graceMs } : {}), dryRun: Boolean(opts.dryRun) });
          return { exitCode: EXIT_OK, json: { ...report }, text: gcText(report) };
        } finally {
          await repo.backend.close();
        }
      });
    });
}
