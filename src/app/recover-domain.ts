import { VmLock } from '../hypervisor/index.js';
import { backupWorkDir, domainLockPath, LibvirtDomain, recoverDomainState, Virsh, type DomainRecoveryReport } from '../libvirt/index.js';
import { domainRecoveryCommand } from './backup-domain.js';

/**
 * `blockrep recover --domain`: puts a libvirt domain right after a blockrep run was killed at
 * any moment (thaw, end a leftover backup job of blockrep's and remove its scratch files, end a
 * leftover block job, commit overlays back, delete leftover overlay files). Takes the domain's lock, so it never interferes with a run that is still alive.
 */

export interface RecoverDomainRequest {
  domain: string;
  connect?: string;
}

export interface RecoverDomainReport extends DomainRecoveryReport {
  domain: string;
  durationMs: number;
}

export async function recoverDomain(request: RecoverDomainRequest, options: { onWarning?: (message: string) => void } = {}): Promise<RecoverDomainReport> {
  const started = Date.now();
  const lock = await VmLock.acquireAt(await domainLockPath(request.connect, request.domain), 'recovery');
  try {
    const domain = new LibvirtDomain(new Virsh(request.connect !== undefined ? { connect: request.connect } : {}), request.domain);
    const report = await recoverDomainState(domain, {
      recoveryStep: domainRecoveryCommand(request.domain, request.connect),
      workDir: await backupWorkDir(request.connect, request.domain),
      ...(options.onWarning ? { onWarning: options.onWarning } : {}),
    });
    return { domain: request.domain, ...report, durationMs: Date.now() - started };
  } finally {
    await lock.release();
  }
}
