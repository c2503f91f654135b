import { spawn } from 'node:child_process';

/**
 * Host-side hooks of a live backup: a command run on the backup host before the guest is
 * frozen and one after it is thawed (to pause and resume an application the guest agent cannot
 * reach, say). Argument lists run without a shell; a command given as one string runs with
 * /bin/sh -c. Each gets BLOCKREP_VM and BLOCKREP_PHASE in its environment and a time limit,
 * after which its process group is killed. Running a hook never throws: the result says how it
 * ended.
 */

/** `argv`: program and arguments, no shell; `shell`: a command line for /bin/sh -c. */
export type HostHookCommand = { argv: string[] } | { shell: string };

export interface HostHooks {
  beforeFreeze?: HostHookCommand;
  afterThaw?: HostHookCommand;
  timeoutMs: number;
  /** abort: a failing beforeFreeze stops the VM's backup before anything changed; continue: warn. */
  onFailure: 'abort' | 'continue';
}

export type HostHookPhase = 'before-freeze' | 'after-thaw';

export interface HostHookResult {
  phase: HostHookPhase;
  /** The command as configured, for reports. */
  command: string;
  status: 'ok' | 'failed' | 'timed-out';
  exitCode?: number;
  signal?: string;
  durationMs: number;
  /** The end of what it wrote to stdout and stderr (at most OUTPUT_BYTES). */
  output: string;
  /** Why it failed, in words. */
  message?: string;
}

export const HOOK_OUTPUT_BYTES = 4096;
/** After SIGTERM at the time limit, how long the hook has before SIGKILL. */
const KILL_GRACE_MS = 2000;

export function describeHookCommand(command: HostHookCommand): string {
  return 'shell' in command ? command.shell : command.argv.map((a) => (/^[A-Za-z0-9_./:@%+=,-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`)).join(' ');
}

export function runHostHook(command: HostHookCommand, phase: HostHookPhase, vm: string, timeoutMs: number): Promise<HostHookResult> {
  const started = Date.now();
  const shown = describeHookCommand(command);
  const [program, args] = 'shell' in command ? ['/bin/sh', ['-c', command.shell]] : [command.argv[0]!, command.argv.slice(1)];
  return new Promise((resolve) => {
    let output = Buffer.alloc(0);
    const keep = (d: Buffer): void => {
      output = Buffer.concat([output, d]);
      if (output.length > HOOK_OUTPUT_BYTES) output = output.subarray(output.length - HOOK_OUTPUT_BYTES);
    };
    let timedOut = false;
    let settled = false;
    const finish = (r: Omit<HostHookResult, 'phase' | 'command' | 'durationMs' | 'output'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(killer);
      resolve({ phase, command: shown, durationMs: Date.now() - started, output: output.toString('utf8').replace(/^\uFFFD+/, ''), ...r });
    };
    let killer: NodeJS.Timeout | undefined;
    // Its own process group, so that the time limit ends what the hook started too.
    const child = spawn(program, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BLOCKREP_VM: vm, BLOCKREP_PHASE: phase } });
    const killGroup = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // gone already
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      killer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    }, timeoutMs);
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (err) => finish({ status: 'failed', message: `cannot run ${shown}: ${err.message}` }));
    // 'exit', not 'close': a daemon the hook started may keep its output open.
    child.on('exit', (code, signal) => {
      // What the hook started is killed with it: nothing of a timed-out hook outlives it.
      if (timedOut) killGroup('SIGKILL');
      child.stdout.destroy();
      child.stderr.destroy();
      if (timedOut) finish({ status: 'timed-out', ...(signal ? { signal } : {}), message: `did not finish within ${timeoutMs} ms and was killed` });
      else if (code === 0) finish({ status: 'ok', exitCode: 0 });
      else if (code !== null) finish({ status: 'failed', exitCode: code, message: `exited with status ${code}` });
      else finish({ status: 'failed', ...(signal ? { signal } : {}), message: `was killed by ${signal}` });
    });
  });
}
