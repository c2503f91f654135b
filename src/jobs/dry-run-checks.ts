import { access, constants, stat } from 'node:fs/promises';
import { delimiter, isAbsolute, join } from 'node:path';
import { openGuestAgent, QmpClient, listVmDisks } from '../hypervisor/index.js';
import { openImage } from '../image/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, systemErrorCode, toBlockrepError, wrapSystemError, type ErrorCode } from '../shared/index.js';
import { selectDisks } from '../app/index.js';
import type { ImageVmJob, LibvirtVmJob, LiveVmJob } from '../config/index.js';
import { isOverlayFile } from '../hypervisor/index.js';
import { LibvirtDomain, snapshotCandidates, Virsh } from '../libvirt/index.js';
import type { CheckReport } from './run-report.js';

/**
 * `blockrep run --dry-run`: the questions a run would ask, asked read-only — sockets, monitor,
 * disks, agent, images, repository access. Nothing is frozen, locked or written.
 */

export interface CheckTimeouts {
  qmpGreetingMs?: number;
  agentSyncMs?: number;
}

/** The socket must be there and be a socket; said with where it is configured. */
export async function checkSocket(path: string, where: string, code: ErrorCode, what: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await stat(path)).isSocket();
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') {
      throw new BlockrepError(code, `${where}: no ${what} socket at ${path}: the VM is not running, or QEMU listens elsewhere`, { details: { socket: path } });
    }
    throw new BlockrepError(code, `${where}: cannot reach ${path}: ${wrapSystemError(err, 'stat').message}`, { cause: err, details: { socket: path } });
  }
  if (!isSocket) throw new BlockrepError(code, `${where}: ${path} is not a socket`, { details: { socket: path } });
}

/** A program of an argv hook: an executable path, or a name found in PATH (as spawn finds it). */
async function findProgram(program: string): Promise<string | undefined> {
  const candidates = program.includes('/') ? [program] : (process.env.PATH ?? '').split(delimiter).filter(isAbsolute).map((d) => join(d, program));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      if ((await stat(c)).isFile()) return c;
    } catch {
      // not this one
    }
  }
  return undefined;
}

/** The host hooks' programs exist (not run: a dry run changes nothing). */
async function checkHooks(vm: LiveVmJob): Promise<CheckReport | undefined> {
  const hooks = vm.hooks;
  if (!hooks) return undefined;
  const missing: string[] = [];
  const seen: string[] = [];
  for (const [key, command] of [['beforeFreeze', hooks.beforeFreeze], ['afterThaw', hooks.afterThaw]] as const) {
    if (!command) continue;
    const program = 'shell' in command ? '/bin/sh' : command.argv[0]!;
    if ((await findProgram(program)) === undefined) missing.push(`${vm.where('hooks', key)}: ${program} is not an executable file${program.includes('/') ? '' : ' in PATH'}`);
    else seen.push(`${key} (${program})`);
  }
  if (missing.length === 0) return { check: 'hooks', status: 'ok', message: `host hooks found: ${seen.join(', ')}` };
  // A missing afterThaw, or onFailure continue, only warns when the backup runs.
  const fatal = hooks.onFailure === 'abort' && missing.some((m) => m.includes('beforeFreeze'));
  return fatal ? { check: 'hooks', status: 'failed', code: 'HOOK_FAILED', message: missing.join('; ') } : { check: 'hooks', status: 'warning', message: missing.join('; ') };
}

/** Dry run of a live VM: every question asked read-only; nothing is frozen, locked or written. */
export async function checkLiveVm(repo: Repository | undefined, vm: LiveVmJob, options: { signal?: AbortSignal; timeouts?: CheckTimeouts }): Promise<CheckReport[]> {
  const checks: CheckReport[] = [];
  const fail = (check: CheckReport['check'], err: unknown): CheckReport[] => {
    const e = toBlockrepError(err, options.signal?.aborted);
    checks.push({ check, status: 'failed', code: e.code, message: e.message });
    return checks;
  };
  const hooks = await checkHooks(vm);
  if (hooks) checks.push(hooks);
  try {
    await checkSocket(vm.qmpSocket, vm.where('qmp'), 'QMP_UNAVAILABLE', 'QMP');
    checks.push({ check: 'qmp-socket', status: 'ok', message: `${vm.qmpSocket} is a socket` });
  } catch (err) {
    return fail('qmp-socket', err);
  }
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(vm.qmpSocket, options.timeouts?.qmpGreetingMs !== undefined ? { greetingTimeoutMs: options.timeouts.qmpGreetingMs } : {});
    const v = qmp.greeting.QMP.version.qemu;
    checks.push({ check: 'qmp', status: 'ok', message: `QEMU ${v.major}.${v.minor}.${v.micro} answers on its monitor` });
  } catch (err) {
    return fail('qmp', err);
  }
  try {
    let diskIds: string[];
    try {
      const { disks } = await listVmDisks(qmp);
      // The same choice the backup makes (backup-vm.ts), so a dry run cannot disagree with it.
      try {
        diskIds = selectDisks(disks, vm.name, vm.disks).map((d) => `${vm.name}/${d.id}`);
      } catch (err) {
        if (vm.disks === undefined || !isBlockrepError(err) || err.code !== 'USAGE') throw err;
        throw new BlockrepError('USAGE', `${vm.where('disks')}: ${err.message}`, { cause: err });
      }
      checks.push({ check: 'disks', status: 'ok', message: `will back up ${diskIds.join(', ')}` });
    } catch (err) {
      return fail('disks', err);
    }
    if (vm.quiesce !== 'off') {
      try {
        const agent = await openGuestAgent(qmp, vm.qgaSocket, options.timeouts?.agentSyncMs !== undefined ? { syncTimeoutMs: options.timeouts.agentSyncMs } : {});
        try {
          await agent.ping();
          const state = await agent.status();
          if (state === 'frozen') {
            checks.push({ check: 'agent', status: 'failed', code: 'RECOVERY_NEEDED', message: `the guest is frozen now; run: blockrep recover --qmp ${vm.qmpSocket}` });
          } else {
            checks.push({ check: 'agent', status: 'ok', message: 'the guest agent answers guest-ping; the guest is thawed' });
          }
        } finally {
          await agent.close();
        }
      } catch (err) {
        const e = toBlockrepError(err);
        checks.push(
          vm.quiesce === 'require'
            ? { check: 'agent', status: 'failed', code: e.code, message: e.message }
            : { check: 'agent', status: 'warning', code: e.code, message: `${e.message}; the backup will be crash-consistent only (quiesce: require makes this an error)` },
        );
      }
    }
    await checkRepositoryAccess(repo, diskIds, checks);
  } finally {
    await qmp.close();
  }
  return checks;
}

export async function checkImageVm(repo: Repository | undefined, vm: ImageVmJob): Promise<CheckReport[]> {
  const checks: CheckReport[] = [];
  for (const img of vm.images) {
    try {
      const reader = await openImage({ path: img.path, ...(img.format ? { format: img.format } : {}) });
      try {
        checks.push({ check: 'image', status: 'ok', message: `${img.path}: ${reader.format}, ${reader.virtualSize} bytes, readable (disk ${img.diskId})` });
      } finally {
        await reader.close();
      }
    } catch (err) {
      const e = toBlockrepError(err);
      checks.push({ check: 'image', status: 'failed', code: e.code, message: `${img.where}: ${e.message}` });
    }
  }
  await checkRepositoryAccess(
    repo,
    vm.images.map((i) => i.diskId),
    checks,
  );
  return checks;
}

/** Reads each disk's latest version: the token may read them (writing is not tried). */
async function checkRepositoryAccess(repo: Repository | undefined, diskIds: string[], checks: CheckReport[]): Promise<void> {
  if (!repo) return;
  for (const disk of diskIds) {
    try {
      const latest = await repo.latestVersion(disk);
      checks.push({ check: 'repository-access', status: 'ok', message: latest === undefined ? `${disk}: no version yet (the first backup is a full one)` : `${disk}: latest version ${latest}` });
    } catch (err) {
      const e = toBlockrepError(err);
      checks.push({ check: 'repository-access', status: 'failed', code: e.code, message: `${disk}: ${e.message}` });
    }
  }
}

/** A local repository folder that a run could create: it or its nearest existing parent is a folder. */
export async function creatable(path: string): Promise<boolean> {
  let p = path;
  for (let i = 0; i < 64; i++) {
    try {
      return (await stat(p)).isDirectory();
    } catch {
      const parent = p.replace(/\/[^/]*\/?$/, '') || '/';
      if (parent === p) return false;
      p = parent;
    }
  }
  return false;
}

/** Dry run of a libvirt domain: its state, its disks, the agent channel, through read-only virsh verbs. */
export async function checkLibvirtVm(vm: LibvirtVmJob): Promise<CheckReport[]> {
  const checks: CheckReport[] = [];
  const fail = (check: 'domain' | 'disks', err: unknown): CheckReport[] => {
    const e = toBlockrepError(err);
    checks.push({ check, status: 'failed', code: e.code, message: `${vm.where('domain')}: ${e.message}` });
    return checks;
  };
  const domain = new LibvirtDomain(new Virsh(vm.connect !== undefined ? { connect: vm.connect } : {}), vm.domain);
  let state: string;
  try {
    state = await domain.state();
  } catch (err) {
    return fail('domain', err);
  }
  if (state !== 'running' && state !== 'paused') {
    checks.push({ check: 'domain', status: 'failed', code: 'DOMAIN_NOT_RUNNING', message: `${vm.where('domain')}: domain ${vm.domain} is ${state}` });
    return checks;
  }
  checks.push({ check: 'domain', status: 'ok', message: `domain ${vm.domain} is ${state}` });
  try {
    const live = await domain.definition();
    const left = live.disks.find((d) => d.source !== undefined && isOverlayFile(d.source));
    if (left) {
      checks.push({ check: 'disks', status: 'failed', code: 'RECOVERY_NEEDED', message: `disk ${left.target} runs on a blockrep overlay; run: blockrep recover --domain ${vm.domain}` });
      return checks;
    }
    const { disks, skipped } = snapshotCandidates(live);
    const wanted = vm.disks ?? disks.map((d) => d.target);
    const missing = wanted.filter((w) => !disks.some((d) => d.target === w));
    if (missing.length > 0 || disks.length === 0) {
      checks.push({ check: 'disks', status: 'failed', code: 'USAGE', message: `${vm.where('disks')}: no disk ${missing.join(', ') || 'at all'} to back up; its disks: ${disks.map((d) => d.target).join(', ') || 'none'}` });
      return checks;
    }
    checks.push({ check: 'disks', status: 'ok', message: `${wanted.join(', ')}${skipped.length > 0 ? `; left out: ${skipped.map((s) => `${s.id} (${s.reason})`).join(', ')}` : ''}` });
    if (vm.quiesce !== 'off') {
      const ok = live.agent?.state === 'connected';
      checks.push({
        check: 'agent',
        status: ok ? 'ok' : vm.quiesce === 'require' ? 'failed' : 'warning',
        ...(ok ? {} : { code: 'AGENT_UNAVAILABLE' as const }),
        message: ok ? 'the guest agent is connected' : live.agent ? 'the guest agent is not connected' : 'the domain has no guest-agent channel',
      });
    }
  } catch (err) {
    return fail('disks', err);
  }
  return checks;
}
