import type { Command } from 'commander';
import type { RunEvent, RunReport } from '../../jobs/index.js';
import { BlockrepError, toBlockrepError, type ErrorCode } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK, exitCodeFor } from '../exit-codes.js';
import { eventLogger, LOG_FORMATS, type LogFormat } from '../output/event-log.js';
import { writeReportFile } from '../output/run-report-file.js';
import { runReportText } from '../output/run-report-text.js';
import { parseIntOption } from '../parse-options.js';
import { passphraseSource } from '../repository-options.js';

interface RunOptions {
  config: string;
  only?: string[];
  dryRun?: boolean;
  json?: boolean;
  report?: string;
  logFormat: string;
  parallel?: string;
  passwordFile?: string;
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description(
      'back up every VM of a job configuration (YAML) into its repository, a few at a time; one VM failing never stops the others. ' +
        'Exit 0 when every VM was backed up, 13 when some failed, 1 when none could be',
    )
    .requiredOption('--config <file>', 'the job configuration (YAML or JSON): repository, defaults, VMs; see docs/guide/nightly-jobs.md')
    .option('--only <vm...>', 'only these VMs, by name')
    .option('--dry-run', 'check the configuration, the sockets, the guest agents, the images and the repository access; change nothing')
    .option('--json', 'print the run report as one JSON object')
    .option('--report <file>', 'also write the JSON run report to this file (atomically)')
    .option('--log-format <format>', 'the event log on stderr, one line per event: text or json', 'text')
    .option('--parallel <n>', "VMs backed up at once (default: the config's parallel, else 2)")
    .option('--password-file <file>', "encrypted repository: file whose first line is the passphrase (default: the config's repository.passwordFile, else $BLOCKREP_PASSWORD, else asked on the terminal)")
    .action(async (opts: RunOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        if (!LOG_FORMATS.includes(opts.logFormat as LogFormat)) throw new BlockrepError('USAGE', `--log-format must be text or json, not ${JSON.stringify(opts.logFormat)}`);
        const log = eventLogger(opts.logFormat as LogFormat);
        try {
          const parallel = opts.parallel === undefined ? undefined : parseIntOption(opts.parallel, '--parallel', 1, 16);
          // Loaded only for a run (YAML parser, hypervisor code): other commands start faster.
          const [{ loadJobConfig }, { runJobs }] = await Promise.all([import('../../config/index.js'), import('../../jobs/index.js')]);
          const config = await loadJobConfig(opts.config);
          const report = await runJobs(config, {
            signal: ctx.signal,
            onEvent: log,
            ...(opts.only ? { only: opts.only } : {}),
            ...(opts.dryRun ? { dryRun: true } : {}),
            ...(parallel !== undefined ? { parallel } : {}),
            passphrase: passphraseSource({ passwordFile: opts.passwordFile ?? config.repository.passwordFile }, `passphrase for ${config.repository.location}: `),
          });
          const outcome = runOutcome(report);
          const json = { ...report, ok: outcome === undefined, ...(outcome ?? {}) };
          if (opts.report !== undefined) await writeReportFile(opts.report, json);
          return { exitCode: outcome ? exitCodeFor(outcome.code) : EXIT_OK, json, text: runReportText(report) };
        } catch (err) {
          // The run could not start (a mistake in the config, --only): still say so in the
          // log and in the report file, which a monitor reads every morning.
          const e = toBlockrepError(err, ctx.signal.aborted);
          const event: RunEvent = { at: Date.now(), level: 'error', event: 'run-failed', code: e.code, message: e.message };
          if (opts.logFormat === 'json') log(event);
          if (opts.report !== undefined) {
            await writeReportFile(opts.report, { ok: false, code: e.code, message: e.message, config: opts.config, ...(e.details ? { details: e.details } : {}) }).catch(() => undefined);
          }
          throw e;
        }
      });
    });
}

/** The run's error, when it has one: interrupted, nothing could run, or some VMs failed. */
export function runOutcome(r: RunReport): { code: ErrorCode; message: string } | undefined {
  const failed = r.vms.filter((v) => v.status === 'failed');
  const names = failed.map((v) => `${v.vm} [${v.code}]`).join(', ');
  if (r.interrupted) return { code: 'INTERRUPTED', message: `interrupted: ${r.summary.ok} VM(s) done, ${r.summary.notStarted} not started; nothing half-done was published` };
  if (r.repository.status === 'failed') return { code: 'RUN_FAILED', message: `nothing could run: the repository ${r.repository.location} could not be opened [${r.repository.code}]: ${r.repository.message}` };
  if (failed.length === 0) return undefined;
  if (r.summary.ok === 0) return { code: 'RUN_FAILED', message: `no VM could be ${r.dryRun ? 'checked' : 'backed up'}: ${names}` };
  return { code: 'PARTIAL_FAILURE', message: `${failed.length} of ${r.summary.vms} VM(s) failed: ${names}` };
}
