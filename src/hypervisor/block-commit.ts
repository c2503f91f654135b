import { unlink } from 'node:fs/promises';
import { z } from 'zod';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { commitJobFor } from './overlay-names.js';
import type { QmpClient } from './qmp-client.js';
import { listNamedNodes, queryBlockSchema } from './vm-disks.js';

/**
 * Merges a blockrep overlay back into its base with an active block-commit and pivots the VM
 * back onto the base: block-commit (explicit base node, no auto-dismiss) → READY →
 * block-job-complete → concluded → job-dismiss → query-block shows the base node active again
 * → the overlay file is deleted. A commit that fails leaves the VM running on its overlay (its
 * data is safe there) and says so, with the step that finishes the job.
 */

export const jobStatusSchema = z.enum(['undefined', 'created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting', 'concluded', 'null']);
export type JobStatus = z.infer<typeof jobStatusSchema>;

export const queryJobsSchema = z.array(
  z.object({
    id: z.string(),
    type: z.string(),
    status: jobStatusSchema,
    'current-progress': z.number().optional(),
    'total-progress': z.number().optional(),
    error: z.string().optional(),
  }),
);
export type JobInfo = z.infer<typeof queryJobsSchema>[number];

export interface CommitTarget {
  /** The disk's name in messages (its blockrep disk id). */
  label: string;
  overlayNode: string;
  overlayFile: string;
  baseNode: string;
  baseFile: string;
}

export interface CommitOptions {
  /** Called when the job is READY, before it is completed (for tests that interrupt here). */
  onReady?: () => void | Promise<void>;
  /** Fail when the job's progress has not moved for this long before READY. */
  stallTimeoutMs?: number;
  /** From block-job-complete to the end of the job. */
  completeTimeoutMs?: number;
  /** How often to poll query-jobs (events are the fast path; polling catches what they miss). */
  pollMs?: number;
}

export interface CommitResult {
  /** When the VM ran on its base again (ms since the epoch). */
  pivotedAt: number;
  /** False when the overlay file could not be deleted (the message is in `warning`). */
  overlayDeleted: boolean;
  warning: string | undefined;
}

export const DEFAULT_STALL_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_COMPLETE_TIMEOUT_MS = 5 * 60_000;

export async function queryJobs(qmp: QmpClient): Promise<JobInfo[]> {
  return qmp.execute('query-jobs', undefined, queryJobsSchema);
}

/** Commits `target`'s overlay back into its base; reuses a commit job a killed run left behind. */
export async function commitOverlay(qmp: QmpClient, target: CommitTarget, recoveryStep: string, options: CommitOptions = {}): Promise<CommitResult> {
  const jobId = commitJobFor(target.overlayNode);
  const stuck = (why: string, cause?: unknown): BlockrepError =>
    new BlockrepError(
      'COMMIT_FAILED',
      `disk ${target.label}: the commit of its overlay failed (${why}). The VM keeps running on the overlay ${target.overlayFile}; ` +
        `its data is safe there and nothing is lost. To merge it back: ${recoveryStep}`,
      { ...(cause === undefined ? {} : { cause }), details: { disk: target.label, overlay: target.overlayFile, overlayNode: target.overlayNode, baseNode: target.baseNode, recovery: recoveryStep } },
    );

  const watcher = new JobWatcher(qmp, jobId, options.pollMs ?? 1000);
  try {
    let job = (await queryJobs(qmp)).find((j) => j.id === jobId);
    if (job?.status === 'concluded' || job?.status === 'null') {
      // An earlier job of the same name that ended but was never dismissed: not ours to reuse.
      await dismiss(qmp, jobId);
      job = undefined;
    }
    if (job === undefined) {
      try {
        await qmp.execute('block-commit', { 'job-id': jobId, device: target.overlayNode, 'base-node': target.baseNode, 'auto-dismiss': false }, z.unknown());
      } catch (err) {
        throw stuck(`QEMU refused block-commit: ${messageOf(err)}`, err);
      }
    }
    job = await watcher.until(['ready', 'concluded'], options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, true);
    if (job.status === 'ready') {
      await options.onReady?.();
      try {
        await qmp.execute('block-job-complete', { device: jobId }, z.unknown());
      } catch (err) {
        // Already completing (a recovery racing a pending completion) is fine.
        if (!isBlockrepError(err) || err.code !== 'QMP_ERROR') throw err;
        const now = (await queryJobs(qmp)).find((j) => j.id === jobId);
        if (!now || (now.status !== 'waiting' && now.status !== 'pending' && now.status !== 'concluded')) throw stuck(`QEMU refused block-job-complete: ${messageOf(err)}`, err);
      }
      job = await watcher.until(['concluded'], options.completeTimeoutMs ?? DEFAULT_COMPLETE_TIMEOUT_MS, false);
    }
    await dismiss(qmp, jobId);
    if (job.error !== undefined) throw stuck(`the commit job ended with an error: ${job.error}`);
  } catch (err) {
    await abandonJob(qmp, jobId);
    if (isBlockrepError(err) && err.code === 'COMMIT_FAILED') throw err;
    throw stuck(messageOf(err), err);
  } finally {
    watcher.stop();
  }

  // The pivot must show in query-block: the disk runs on its base node again.
  const blocks = await qmp.execute('query-block', undefined, queryBlockSchema);
  const onOverlay = blocks.some((b) => b.inserted?.['node-name'] === target.overlayNode);
  const onBase = blocks.some((b) => b.inserted?.['node-name'] === target.baseNode && b.inserted.file === target.baseFile);
  if (onOverlay || !onBase) throw stuck('after the commit, query-block does not show the base node active');
  const pivotedAt = Date.now();

  const nodes = await listNamedNodes(qmp);
  if (nodes.some((n) => n['node-name'] === target.overlayNode || n.file === target.overlayFile)) {
    return { pivotedAt, overlayDeleted: false, warning: `disk ${target.label}: the overlay ${target.overlayFile} is still open in QEMU after the commit; it was not deleted` };
  }
  try {
    await unlink(target.overlayFile);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return { pivotedAt, overlayDeleted: false, warning: `disk ${target.label}: could not delete the committed overlay ${target.overlayFile}: ${messageOf(err)}` };
    }
  }
  return { pivotedAt, overlayDeleted: true, warning: undefined };
}

/** Finishes a commit job found in QEMU without knowing its disk: completes it or lets it end. */
export async function finishCommitJob(qmp: QmpClient, jobId: string, options: CommitOptions = {}): Promise<JobInfo> {
  const watcher = new JobWatcher(qmp, jobId, options.pollMs ?? 1000);
  try {
    let job = await watcher.until(['ready', 'concluded'], options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS, true);
    if (job.status === 'ready') {
      await qmp.execute('block-job-complete', { device: jobId }, z.unknown());
      job = await watcher.until(['concluded'], options.completeTimeoutMs ?? DEFAULT_COMPLETE_TIMEOUT_MS, false);
    }
    await dismiss(qmp, jobId);
    return job;
  } finally {
    watcher.stop();
  }
}

async function dismiss(qmp: QmpClient, jobId: string): Promise<void> {
  try {
    await qmp.execute('job-dismiss', { id: jobId }, z.unknown());
  } catch (err) {
    // Gone already is fine.
    if (!(await queryJobs(qmp)).some((j) => j.id === jobId)) return;
    throw err;
  }
}

/** After a failure: make sure no job of ours is left running or concluded (best effort). */
async function abandonJob(qmp: QmpClient, jobId: string): Promise<void> {
  try {
    const job = (await queryJobs(qmp)).find((j) => j.id === jobId);
    if (!job) return;
    if (job.status !== 'concluded' && job.status !== 'null') {
      const w = new JobWatcher(qmp, jobId, 500);
      try {
        await qmp.execute('block-job-cancel', { device: jobId, force: true }, z.unknown());
        await w.until(['concluded'], 60_000, false);
      } finally {
        w.stop();
      }
    }
    await dismiss(qmp, jobId);
  } catch {
    // the connection may be gone; recovery finds the job later
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Follows one job: JOB_STATUS_CHANGE events (registered before the job is started) plus a
 * periodic query-jobs, which catches states reached before this client connected.
 */
class JobWatcher {
  /** Counts this job's status events, so that one arriving during a query is not slept through. */
  private events = 0;
  private wake: (() => void) | undefined;
  private readonly off: () => void;

  constructor(
    private readonly qmp: QmpClient,
    private readonly jobId: string,
    private readonly pollMs: number,
  ) {
    this.off = qmp.onEvent((e) => {
      if (e.event === 'JOB_STATUS_CHANGE' && e.data?.id === jobId) {
        this.events++;
        this.wake?.();
      }
    });
  }

  /**
   * Waits until the job is in one of `wanted`; returns its query-jobs entry then. Fails when the
   * job disappears, or after `timeoutMs` (with `stall`: without progress for that long).
   */
  async until(wanted: JobStatus[], timeoutMs: number, stall: boolean): Promise<JobInfo> {
    let deadline = Date.now() + timeoutMs;
    let progress: number | undefined;
    for (;;) {
      const seen = this.events;
      const job = (await queryJobs(this.qmp)).find((j) => j.id === this.jobId);
      if (!job) throw new BlockrepError('QMP_ERROR', `the job ${this.jobId} disappeared from QEMU`);
      if (wanted.includes(job.status)) return job;
      if (stall && job['current-progress'] !== progress) {
        progress = job['current-progress'];
        deadline = Date.now() + timeoutMs;
      }
      if (Date.now() > deadline) throw new BlockrepError('QMP_ERROR', `the job ${this.jobId} stayed ${job.status} for ${Math.round(timeoutMs / 1000)} s`);
      if (this.events !== seen) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, this.pollMs);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.wake = done;
      });
      this.wake = undefined;
    }
  }

  stop(): void {
    this.off();
    this.wake?.();
  }
}
