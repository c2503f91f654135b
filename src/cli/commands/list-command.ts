import type { Command } from 'commander';
import { listVersions } from '../../app/list-versions.js';
import { openRepository } from '../../repository/open-repository.js';
import { assertDiskId } from '../../shared/disk-id.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { listText } from '../output/text-reports.js';

export function registerList(program: Command): void {
  program
    .command('list')
    .description('list the disks in a repository and their versions')
    .requiredOption('--repo <repo>', 'repository directory')
    .option('--disk <id>', 'only this disk')
    .option('--json', 'print one JSON object')
    .option('--token-file <file>', 'http(s) repository: file holding the access token (default: $BLOCKREP_TOKEN)')
    .option('--cacert <file>', 'https repository: CA certificate (PEM) to trust')
    .action(async (opts: { repo: string; disk?: string; json?: boolean; tokenFile?: string; cacert?: string }) => {
      await runCommand(Boolean(opts.json), async () => {
        const diskId = opts.disk === undefined ? undefined : assertDiskId(opts.disk);
        const repo = await openRepository(opts.repo, { tokenFile: opts.tokenFile, cacert: opts.cacert });
        const disks = await listVersions(repo, diskId ? { diskId } : {});
        return { exitCode: EXIT_OK, json: { ok: true, disks }, text: listText(disks) };
      });
    });
}
