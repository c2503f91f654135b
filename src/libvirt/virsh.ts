import { spawn } from 'node:child_process';
import { BlockrepError, type ErrorCode } from '../shared/index.js';

/**
 * Runs `virsh` with an argv array (never a shell), `LC_ALL=C`, `--connect URI` when given, a
 * timeout and bounded output, and turns its failures into our error codes with what to do.
 * virsh exits 1 for every failure and gives no error number, so the code is chosen from the
 * message; under LC_ALL=C those messages are libvirt's fixed templates (virerror.c).
 */

export interface VirshOptions {
  /** libvirt URI (`virsh --connect`); default: libvirt's own default (LIBVIRT_DEFAULT_URI, then qemu:///system as root). */
  connect?: string;
  /** Default per-command timeout. */
  timeoutMs?: number;
  /** The program to run; tests may point it elsewhere. */
  program?: string;
}

export interface VirshCall {
  timeoutMs?: number;
  /** The domain the command is about, named in messages. */
  domain?: string;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** dumpxml of a large domain is some hundred KiB; anything far beyond that is not virsh's answer. */
const MAX_STDOUT_BYTES = 8 * 1024 * 1024;
const MAX_STDERR_BYTES = 64 * 1024;

export class Virsh {
  readonly connect: string | undefined;
  private readonly timeoutMs: number;
  private readonly program: string;

  constructor(options: VirshOptions = {}) {
    this.connect = options.connect;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.program = options.program ?? 'virsh';
  }

  /** `--connect URI` for messages that quote a virsh command. */
  get connectArgs(): string[] {
    return this.connect !== undefined ? ['--connect', this.connect] : [];
  }

  /** Runs one virsh command; resolves with its stdout, or throws a BlockrepError. */
  async run(args: string[], call: VirshCall = {}): Promise<string> {
    const r = await this.runRaw(args, call);
    if (r.code !== 0) throw virshError(r.stderr, args, call.domain, this.connect);
    return r.stdout;
  }

  /**
   * Several virsh commands in one process and one connection (virsh's own command-string
   * syntax, each argument single-quoted), run in order whatever each returns. Resolves with the
   * exit code (the last command's), stdout and stderr; the caller tells what succeeded from
   * stdout. Throws only when virsh could not run or timed out.
   */
  runBatch(commands: string[][], call: VirshCall = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    const q = (s: string): string => `'${s.replaceAll("'", "'\\''")}'`;
    const line = commands.map((c) => c.map(q).join(' ')).join(' ; ');
    return this.runRaw([line], call, commands.map((c) => c[0] ?? '').join('+'));
  }

  private runRaw(args: string[], call: VirshCall, name = args[0] ?? ''): Promise<{ code: number; stdout: string; stderr: string }> {
    const argv = [...this.connectArgs, ...args];
    const timeoutMs = call.timeoutMs ?? this.timeoutMs;
    return new Promise((resolve, reject) => {
      // Its own process group: a Ctrl-C meant for blockrep must not reach virsh, which would abort
      // a `blockcommit --wait` and leave the disk on its overlay; blockrep cleans up itself.
      const child = spawn(this.program, argv, { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      const out: Buffer[] = [];
      let outBytes = 0;
      let err = '';
      let overflow = false;
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.stdout.on('data', (d: Buffer) => {
        outBytes += d.length;
        if (outBytes > MAX_STDOUT_BYTES) {
          overflow = true;
          child.kill('SIGKILL');
          return;
        }
        out.push(d);
      });
      child.stderr.on('data', (d: Buffer) => {
        if (err.length < MAX_STDERR_BYTES) err += d.toString('utf8').slice(0, MAX_STDERR_BYTES - err.length);
      });
      child.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (e.code === 'ENOENT') {
          reject(new BlockrepError('LIBVIRT_UNAVAILABLE', `${this.program} is not installed: install libvirt-clients (Debian, Ubuntu) or libvirt-client`, { cause: e }));
        } else {
          reject(new BlockrepError('LIBVIRT_ERROR', `cannot run ${this.program}: ${e.message}`, { cause: e }));
        }
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        const command = `virsh ${name}`;
        if (timedOut) {
          reject(new BlockrepError('LIBVIRT_ERROR', `${command}${call.domain !== undefined ? ` on domain ${call.domain}` : ''} did not finish within ${Math.round(timeoutMs / 1000)} s`, { details: { args } }));
          return;
        }
        if (overflow) {
          reject(new BlockrepError('LIBVIRT_ERROR', `${command} printed more than ${MAX_STDOUT_BYTES} bytes; that is not an answer blockrep understands`, { details: { args } }));
          return;
        }
        resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: err });
      });
    });
  }
}

/** The code and advice for a failed virsh command, from libvirt's message (LC_ALL=C). */
export function virshError(stderr: string, args: string[], domain: string | undefined, connect: string | undefined): BlockrepError {
  const message = stderr
    .split('\n')
    .map((l) => l.replace(/^error: /, '').trim())
    .filter(Boolean)
    .join('; ');
  const what = `virsh ${args[0] ?? ''}`;
  const uri = connect ?? process.env.LIBVIRT_DEFAULT_URI ?? 'the default URI';
  const details = { args, libvirt: message };
  const err = (code: ErrorCode, text: string): BlockrepError => new BlockrepError(code, text, { details });
  if (/failed to connect to the hypervisor|Failed to connect socket|Cannot recv data|End of file while reading data|no connection driver available|authentication (failed|unavailable)/i.test(message)) {
    return err('LIBVIRT_UNAVAILABLE', `libvirt cannot be reached at ${uri} (${message}). Is libvirtd (or virtqemud) running? Give the right URI with --connect`);
  }
  if (/failed to get domain|Domain not found|no domain with matching (name|uuid)/i.test(message)) {
    return err('DOMAIN_NOT_FOUND', `libvirt at ${uri} has no domain ${JSON.stringify(domain ?? '')} (virsh list --all shows the domains)`);
  }
  if (/domain is not running/i.test(message)) {
    return err('DOMAIN_NOT_RUNNING', `domain ${domain ?? ''} is not running (${what}: ${message}); a live backup needs a running domain`);
  }
  if (/agent is in frozen state/i.test(message)) {
    return err('RECOVERY_NEEDED', `the guest of domain ${domain ?? ''} is frozen already (by an earlier run or another tool); blockrep will not freeze it again. To thaw it: blockrep recover --domain ${domain ?? 'NAME'}`);
  }
  if (/guest agent is not (responding|connected|available|configured)|QEMU guest agent is not/i.test(message)) {
    return err('AGENT_UNAVAILABLE', `no guest agent answers in domain ${domain ?? ''} (${message}); install and start qemu-guest-agent in the guest, with a channel org.qemu.guest_agent.0 in the domain`);
  }
  if (/already in active block job|block copy still active|block job .*(active|in progress)|another job is running/i.test(message)) {
    return err('BLOCK_JOB_ACTIVE', `a disk of domain ${domain ?? ''} is in a block job already (${message}); wait for it to end (virsh blockjob ${domain ?? 'DOM'} DISK --info)`);
  }
  return err('LIBVIRT_ERROR', `${what}${domain !== undefined ? ` on domain ${domain}` : ''} failed: ${message || 'no message'}`);
}
