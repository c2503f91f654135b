import type { Command } from 'commander';
import { backupImage, type DiskBackupReport } from '../../app/backup-image.js';
import type { ImageFormat } from '../../image/image-reader.js';
import { openRepository } from '../../repository/open-repository.js';
import { BlockrepError } from '../../shared/blockrep-error.js';
import { assertDiskId, defaultDiskIdForImage } from '../../shared/disk-id.js';
import { parseSize } from '../../shared/size.js';
import { runCommand, toBlockrepError } from '../command-context.js';
import { EXIT_OK, exitCodeFor } from '../exit-codes.js';
import { backupText } from '../output/text-reports.js';
import { parseIntOption } from '../parse-options.js';

/** Measured default (README, bench/results/scan.md): see DEFAULT_BLOCK_SIZE's note there. */
export const DEFAULT_BLOCK_SIZE = '1M';

interface BackupOptions {
  repo: string;
  disk?: string;
  blockSize: string;
  format?: ImageFormat;
  json?: boolean;
  workers?: string;
  compress: boolean;
}

export function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('back up disk images (raw or qcow2) into a repository, storing only the blocks that changed since their last version')
    .argument('<image...>', 'image files or block devices to back up; each is one disk')
    .requiredOption('--repo <repo>', 'repository: a directory (created on first use)')
    .option('--disk <id>', 'disk id (only with a single image); default: the image file name without its extension')
    .option('--block-size <size>', 'block size for change detection and storage, a power of two from 4K to 16M', DEFAULT_BLOCK_SIZE)
    .option('--format <format>', 'image format, raw or qcow2 (default: detected; give it for raw images a guest could write a qcow2 header into)')
    .option('--workers <n>', 'scan threads (default: up to 2)')
    .option('--no-compress', 'store chunks uncompressed')
    .option('--json', 'print one JSON object as the report')
    .action(async (images: string[], opts: BackupOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        if (opts.disk !== undefined && images.length !== 1) throw new BlockrepError('USAGE', '--disk can only be given with a single image');
        if (opts.format !== undefined && opts.format !== 'raw' && opts.format !== 'qcow2') throw new BlockrepError('USAGE', `--format must be raw or qcow2, not ${opts.format}`);
        const blockSize = parseSize(opts.blockSize, 'block size');
        const workers = opts.workers === undefined ? undefined : parseIntOption(opts.workers, '--workers', 0, 64);
        const jobs = images.map((path) => ({ path, diskId: assertDiskId(opts.disk ?? defaultDiskIdForImage(path)) }));
        const seen = new Set<string>();
        for (const j of jobs) {
          if (seen.has(j.diskId)) throw new BlockrepError('USAGE', `two images map to disk id ${j.diskId}; back them up separately with --disk`);
          seen.add(j.diskId);
        }
        const started = Date.now();
        const repo = await openRepository(opts.repo, { create: true });
        const disks: DiskBackupReport[] = [];
        const failures: Array<{ disk: string; path: string; code: string; message: string }> = [];
        const errors: BlockrepError[] = [];
        let firstExit = EXIT_OK;
        for (const job of jobs) {
          if (ctx.signal.aborted) break;
          try {
            disks.push(
              await backupImage(
                repo,
                { path: job.path, diskId: job.diskId, blockSize, ...(opts.format ? { format: opts.format } : {}) },
                { signal: ctx.signal, onProgress: ctx.onProgress, compress: opts.compress, ...(workers !== undefined ? { workers } : {}) },
              ),
            );
          } catch (err) {
            const e = toBlockrepError(err, ctx.signal.aborted);
            errors.push(e);
            failures.push({ disk: job.diskId, path: job.path, code: e.code, message: e.message });
            if (firstExit === EXIT_OK) firstExit = exitCodeFor(e.code);
          }
        }
        const durationMs = Date.now() - started;
        const first = failures[0];
        // One image, one failure: report it as the command's error.
        if (errors[0] && jobs.length === 1) throw errors[0];
        return {
          exitCode: firstExit,
          json: {
            ok: failures.length === 0,
            durationMs,
            ...(first ? { code: first.code, message: first.message, failures } : {}),
            disks,
          },
          text: backupText(disks, failures, durationMs),
        };
      });
    });
}
