import { nbdSocketFor, openGuestAgent, type GuestAgentClient, QmpClient, recoverVmState, type RecoveryReport, VmLock } from '../hypervisor/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { recoveryCommand } from './backup-vm.js';

/**
 * `blockrep recover`: puts a VM right after a blockrep run was killed at any moment: thaws the
 * guest if it was left frozen, commits any blockrep overlay back, deletes leftover overlay
 * files. Takes the VM's lock, so it never interferes with a run that is still alive.
 */

export interface RecoverVmRequest {
  qmpSocket: string;
  /** The guest agent's socket; default: found through QMP. */
  qgaSocket?: string;
}

export interface RecoverVmReport extends Omit<RecoveryReport, 'agentError'> {
  /** Whether the guest agent could be asked about the freeze state. */
  agent: 'ok' | 'unavailable';
  durationMs: number;
}

export async function recoverVm(request: RecoverVmRequest, options: { onWarning?: (message: string) => void; agentSyncTimeoutMs?: number } = {}): Promise<RecoverVmReport> {
  const started = Date.now();
  const lock = await VmLock.acquire(request.qmpSocket, 'recovery');
  let qmp: QmpClient | undefined;
  let agent: GuestAgentClient | undefined;
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    options.onWarning?.(m);
  };
  try {
    qmp = await QmpClient.connect(request.qmpSocket);
    let agentProblem: BlockrepError | undefined;
    try {
      agent = await openGuestAgent(qmp, request.qgaSocket, options.agentSyncTimeoutMs !== undefined ? { syncTimeoutMs: options.agentSyncTimeoutMs } : {}, warn);
    } catch (err) {
      if (!isBlockrepError(err) || err.code !== 'AGENT_UNAVAILABLE') throw err;
      agentProblem = err;
      // Without an agent nobody can have frozen the guest through it; an explicit socket that
      // does not answer is worth a warning all the same.
      warn(`${err.message}; the guest's freeze state was not checked`);
    }
    const report = await recoverVmState(qmp, agent, { recoveryStep: recoveryCommand(request.qmpSocket, request.qgaSocket), nbdSocket: nbdSocketFor(request.qmpSocket), onWarning: warn });
    if (report.agentError) {
      throw new BlockrepError(
        'THAW_FAILED',
        `the guest agent could not be asked about or could not thaw the guest (${report.agentError.message}); it may still be frozen. Run this again; if it keeps failing, check qemu-guest-agent in the guest`,
        { cause: report.agentError, details: { committed: report.committed, removedFiles: report.removedFiles } },
      );
    }
    const { agentError: _ignored, ...rest } = report;
    return { ...rest, warnings, agent: agentProblem ? 'unavailable' : 'ok', durationMs: Date.now() - started };
  } finally {
    agent?.destroy();
    await qmp?.close();
    await lock.release();
  }
}
