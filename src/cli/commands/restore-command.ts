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
  mode?: string;
  json?: boolean;
}

/** `--mode 0640`: permission bits only (no setuid, setgid or sticky on a disk image). */
function parseMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text)) throw new BlockrepError('USAGE', `--mode must be octal permission bits such as 0600 or 0640, not ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

export function registerRestore(program: Command): void {
  addRepositoryOptions(program.command('restore'))
    .description('write a version of a disk to an image file or block device, bit-exact (every chunk is checked on the way)')
    .requiredOption('--disk <id>', 'disk id (see `blockrep list`)')
    .option('--version <id>', 'version id, or latest', 'latest')
    .requiredOption('--to <path>', 'image file (or block device, with --force) to write')
    .option('--format <format>', 'raw or qcow2', 'raw')
    .option('--force', 'replace an existing file or write onto a block device')
    .option('--mode <octal>', 'permissions of the image file written (a replaced file gets them too)', '0600')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: RestoreOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        if (opts.format !== 'raw' && opts.format !== 'qcow2') throw new BlockrepError('USAGE', `--format must be raw or qcow2, not ${opts.format}`);
        if (opts.to === '') throw new BlockrepError('USAGE', '--to needs a path: the image file or block device to write');
        const mode = parseMode(opts.mode ?? '0600');
        const diskId = assertDiskId(opts.disk);
        const version = opts.version === 'latest' ? undefined : assertVersionId(opts.version);
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts));
        const report = await restoreVersion(
          repo,
          { diskId, to: opts.to, format: opts.format, force: Boolean(opts.force), mode, ...(version ? { version } : {}) },
          { signal: ctx.signal, onProgress: ctx.onProgress },
        );
        return { exitCode: EXIT_OK, json: { ok: true, ...report }, text: restoreText(report) };
      });
    });
}
