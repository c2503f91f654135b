import type { Command } from 'commander';
import { listVersions } from '../../app/index.js';
import { openRepository } from '../../repository/index.js';
import { assertDiskId } from '../../shared/index.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { listText } from '../output/text-reports.js';

export function registerList(program: Command): void {
  addRepositoryOptions(program.command('list'))
    .description('list the disks in a repository and their versions')
    .option('--disk <id>', 'only this disk')
    .option('--json', 'print one JSON object')
    .action(async (opts: RepositoryCliOptions & { disk?: string; json?: boolean }) => {
      await runCommand(Boolean(opts.json), async () => {
        const diskId = opts.disk === undefined ? undefined : assertDiskId(opts.disk);
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts));
        const disks = await listVersions(repo, diskId ? { diskId } : {});
        return { exitCode: EXIT_OK, json: { ok: true, disks }, text: listText(disks) };
      });
    });
}
