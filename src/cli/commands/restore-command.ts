import type { Command } from 'commander';
import { restoreVersion } from '../../app/index.js';
import { openRepository } from '../../repository/index.js';
import { BlockrepError, assertDiskId, assertVersionId } from '../../shared/index.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { restoreText } from '../output/text-reports.js';

interface RestoreOptions extends RepositoryCliOptions {
  disk: string;
  version: string;
  to: string;
  format: string;
  force?: boolean;
  json?: boolean;
}

export function registerRestore(program: Command): void {
  addRepositoryOptions(program.command('restore'))
    .description('write a version of a disk to an image file or block device, bit-exact (every chunk is checked on the way)')
    .requiredOption('--disk <id>', 'disk id (see `blockrep list`)')
    .option('--version <id>', 'version id, or latest', 'latest')
    .requiredOption('--to <path>', 'image file (or block device, with --force) to write')
    .option('--format <format>', 'raw or qcow2', 'raw')
    .option('--force', 'replace an existing file or write onto a block device')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: RestoreOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        if (opts.format !== 'raw' && opts.format !== 'qcow2') throw new BlockrepError('USAGE', `--format must be raw or qcow2, not ${opts.format}`);
        const diskId = assertDiskId(opts.disk);
        const version = opts.version === 'latest' ? undefined : assertVersionId(opts.version);
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts));
        const report = await restoreVersion(
          repo,
          { diskId, to: opts.to, format: opts.format, force: Boolean(opts.force), ...(version ? { version } : {}) },
          { signal: ctx.signal, onProgress: ctx.onProgress },
        );
        return { exitCode: EXIT_OK, json: { ok: true, ...report }, text: restoreText(report) };
      });
    });
}
