import type { ErrorCode } from '../shared/index.js';
import type { DiskBackupReport, HostHookResult, PruneReport } from '../app/index.js';

/** What `blockrep run` reports: the events it emits while it runs, and the result. Data only. */

export type EventLevel = 'info' | 'warn' | 'error';

export interface RunEvent {
  /** Milliseconds since the epoch. */
  at: number;
  level: EventLevel;
  event: 'run-start' | 'run-done' | 'run-failed' | 'repository' | 'vm-start' | 'vm-done' | 'vm-failed' | 'vm-skipped' | 'disk-done' | 'disk-failed' | 'warning' | 'prune-done' | 'prune-failed' | 'check' | 'hook';
  message: string;
  vm?: string;
  disk?: string;
  code?: ErrorCode;
  /** Figures for machines: bytes, blocks, milliseconds. Never secrets. */
  data?: Record<string, unknown>;
}

export interface OkDiskReport extends DiskBackupReport {
  status: 'ok';
  /** Live disks: snapshot → back on its own image. */
  overlayMs?: number;
}

export interface FailedDiskReport {
  status: 'failed';
  disk: string;
  path: string;
  code: ErrorCode;
  message: string;
}

export type DiskRunReport = OkDiskReport | FailedDiskReport;

export interface CheckReport {
  check: 'hooks' | 'qmp-socket' | 'qmp' | 'domain' | 'disks' | 'agent' | 'image' | 'repository-access';
  status: 'ok' | 'warning' | 'failed';
  message: string;
  code?: ErrorCode;
}

export interface RetentionRunReport {
  status: 'ok' | 'failed';
  disks: string[];
  report?: PruneReport;
  code?: ErrorCode;
  message?: string;
}

export type VmStatus = 'ok' | 'failed' | 'not-started';

export interface VmRunReport {
  vm: string;
  kind: 'live' | 'libvirt' | 'image';
  /** libvirt domains: how they were backed up, and why that method. */
  method?: 'snapshot' | 'backup-api';
  methodReason?: string;
  /** libvirt domains, method backup-api: the checkpoint made, and this repository's older ones deleted or kept. */
  checkpoints?: { created: string | undefined; deleted: string[]; kept: string[] };
  status: VmStatus;
  /** Where the VM is in the config (`FILE:LINE:COL vms[i]`). */
  where: string;
  /** The VM's failure: its own error, or its first disk's, or its retention's. */
  code?: ErrorCode;
  message?: string;
  startedAt?: string;
  durationMs: number;
  /** Live VMs: the guest's filesystems were frozen for the snapshot (snapshot.frozenFilesystems: how many). */
  quiesced?: boolean;
  frozenMs?: number;
  /** The guest refused the freeze (quiesce auto): backed up crash-consistent. */
  freezeFailure?: { code: ErrorCode; message: string };
  /** The host hooks that ran (hooks in the job configuration), in order. */
  hooks?: HostHookResult[];
  /** QMP: the freeze, transaction and thaw; libvirt: the snapshot call (the guest was frozen within it). */
  snapshot?: { freezeMs: number | undefined; transactionMs: number; thawMs: number | undefined; frozenFilesystems: number | undefined } | { snapshotMs: number };
  disks: DiskRunReport[];
  skippedDisks?: Array<{ id: string; reason: string }>;
  warnings: string[];
  retention?: RetentionRunReport;
  /** --dry-run: what was checked. */
  checks?: CheckReport[];
}

export interface RunReport {
  ok: boolean;
  dryRun: boolean;
  interrupted: boolean;
  config: string;
  startedAt: string;
  durationMs: number;
  parallel: number;
  repository: { location: string; status: 'ok' | 'failed'; code?: ErrorCode; message?: string; note?: string };
  vms: VmRunReport[];
  summary: { vms: number; ok: number; failed: number; notStarted: number; disks: number; changedBlocks: number; bytesSent: number };
  /** Object storage: the requests the whole run made, by kind, every retry counted. */
  requests?: Record<string, number>;
}
