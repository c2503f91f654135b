import type { Command } from 'commander';
import { verifyEnvelopes, verifyRepository } from '../../app/index.js';
import { openRepository } from '../../repository/index.js';
import { BlockrepError, assertDiskId, assertVersionId } from '../../shared/index.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';
import { runCommand } from '../command-context.js';
import { EXIT_DAMAGED, EXIT_OK } from '../exit-codes.js';
import { verifyText } from '../output/text-reports.js';
import { parseIntOption } from '../parse-options.js';

interface VerifyOptions extends RepositoryCliOptions {
  disk?: string;
  version?: string;
  sample?: string;
  seed?: string;
  withoutKey?: boolean;
  json?: boolean;
}

export function registerVerify(program: Command): void {
  addRepositoryOptions(program.command('verify'))
    .description('re-read every chunk the versions use and check its SHA-256; report each damaged disk, version and block')
    .option('--disk <id>', 'only this disk')
    .option('--version <id>', 'only this version (or latest) of each selected disk')
    .option('--sample <percent>', 'scrub: check only this percent of the chunks, the next share each UTC day, so nightly runs cover all in 100/percent nights (every manifest is still checked)')
    .option('--seed <n>', "with --sample: choose the chunks from this seed instead of the day's (repeats a run)")
    .option('--without-key', 'encrypted repository: check only what its holder can without the key (the form and size of every sealed chunk and manifest), and say so')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: VerifyOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        const diskId = opts.disk === undefined ? undefined : assertDiskId(opts.disk);
        const version = opts.version === undefined || opts.version === 'latest' ? opts.version : assertVersionId(opts.version);
        const sample = sampleFrom(opts);
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts, { withoutKey: Boolean(opts.withoutKey) }));
        if (opts.withoutKey && (sample !== undefined || version !== undefined)) throw new BlockrepError('USAGE', '--without-key checks every sealed object: it takes no --sample or --version');
        const report = opts.withoutKey ? await verifyEnvelopes(repo, diskId ? { diskId } : {}, { onProgress: ctx.onProgress }) : await verifyRepository(repo, { ...(diskId ? { diskId } : {}), ...(version ? { version } : {}), ...(sample ? { sample } : {}) }, { onProgress: ctx.onProgress });
        return {
          exitCode: report.ok ? EXIT_OK : EXIT_DAMAGED,
          json: { ...report, ...(report.ok ? {} : { code: 'VERIFY_FAILED', message: `${report.damage.length + report.damageNotListed} damaged block(s) or manifest(s)` }) },
          text: verifyText(report),
        };
      });
    });
}

function sampleFrom(opts: VerifyOptions): { percent: number; seed?: number } | undefined {
  if (opts.sample === undefined) {
    if (opts.seed !== undefined) throw new BlockrepError('USAGE', '--seed goes with --sample');
    return undefined;
  }
  const percent = Number(opts.sample.replace(/%$/, ''));
  if (!/^\d+(\.\d+)?%?$/.test(opts.sample.trim()) || !(percent > 0 && percent <= 100)) {
    throw new BlockrepError('USAGE', `--sample must be a percentage above 0 and at most 100, not ${JSON.stringify(opts.sample)}`);
  }
  return { percent, ...(opts.seed !== undefined ? { seed: parseIntOption(opts.seed, '--seed', 0, 2 ** 32 - 1) } : {}) };
}
