import { runningDomains, Virsh } from '../libvirt/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, toBlockrepError, type ErrorCode } from '../shared/index.js';
import { backupDomain, type BackupDomainOptions, type BackupDomainRequest, type DomainBackupReport } from './backup-domain.js';

/**
 * `backup --all-running`: every running domain of the connection, one after the other, each
 * exactly as `backup --domain` would back it up. A domain that fails does not stop the others;
 * the report lists each with its own result. Never prints.
 */

export type RunningDomainResult = { domain: string; ok: true; report: DomainBackupReport } | { domain: string; ok: false; code: ErrorCode; message: string; report?: DomainBackupReport };

export interface RunningDomainsReport {
  domains: RunningDomainResult[];
  durationMs: number;
}

export async function backupRunningDomains(repo: Repository, request: Omit<BackupDomainRequest, 'domain' | 'vmName' | 'disks'>, options: BackupDomainOptions = {}): Promise<RunningDomainsReport> {
  const started = Date.now();
  const virsh = new Virsh({ ...(request.connect !== undefined ? { connect: request.connect } : {}), ...(options.virshProgram !== undefined ? { program: options.virshProgram } : {}) });
  const names = await runningDomains(virsh);
  const domains: RunningDomainResult[] = [];
  for (const domain of names) {
    if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', `interrupted after ${domains.length} of ${names.length} domains`);
    try {
      const report = await backupDomain(repo, { ...request, domain }, options);
      const first = report.failures[0];
      domains.push(first ? { domain, ok: false, code: first.code, message: first.message, report } : { domain, ok: true, report });
    } catch (err) {
      const e = toBlockrepError(err, options.signal?.aborted === true);
      if (e.code === 'INTERRUPTED') throw e;
      domains.push({ domain, ok: false, code: e.code, message: e.message });
    }
  }
  return { domains, durationMs: Date.now() - started };
}
