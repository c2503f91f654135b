import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Real database servers for the guest hooks' tests, from the Debian packages (mariadb-server
 * 10.11, postgresql 15), each in its own folder with a unix socket and no TCP port, run as the
 * users the packages want (mysql, postgres). Plus the hooks run as qemu-ga runs them
 * (`sh guest/fsfreeze-hook.d/NAME freeze`), with their settings in the environment.
 */

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Set BLOCKREP_SKIP_DB_TESTS=1 to skip the tests that start database servers; they never skip silently. */
export const skipDbTests = process.env.BLOCKREP_SKIP_DB_TESTS === '1';

export interface Exit {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(program: string, args: string[], options: { env?: Record<string, string>; input?: string; timeoutMs?: number } = {}): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const p = spawn(program, args, { env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = options.timeoutMs !== undefined ? setTimeout(() => p.kill('SIGKILL'), options.timeoutMs) : undefined;
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    // 'exit', not 'close': a hook leaves a session running in the background on purpose.
    p.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    // A program that exits without reading its input is not an error here.
    p.stdin.on('error', () => undefined);
    p.stdin.end(options.input ?? '');
  });
}

async function must(program: string, args: string[], options: { env?: Record<string, string> } = {}): Promise<string> {
  const r = await run(program, args, options);
  if (r.code !== 0) throw new Error(`${program} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function uidGid(user: string): Promise<{ uid: number; gid: number }> {
  const [uid, gid] = (await must('id', ['-u', user])).trim().concat(' ', (await must('id', ['-g', user])).trim()).split(' ').map(Number);
  return { uid: uid!, gid: gid! };
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** A folder the database users may enter (temp folders are 0700, so its parent is opened too). */
async function openFolder(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await chmod(dirname(dir), 0o755);
  await chmod(dir, 0o755);
}

export class MariadbServer {
  private process: ChildProcess | undefined;
  readonly socket: string;
  /** The option file with the credentials: the client reads it, nothing goes on a command line. */
  readonly optionFile: string;

  private constructor(readonly dir: string) {
    this.socket = join(dir, 'mysqld.sock');
    this.optionFile = join(dir, 'client.cnf');
  }

  static async start(dir: string): Promise<MariadbServer> {
    if (userInfo().uid !== 0) throw new Error('the MariaDB tests run as root (the server runs as mysql); set BLOCKREP_SKIP_DB_TESTS=1 to skip them');
    await openFolder(dir);
    const s = new MariadbServer(dir);
    const { uid, gid } = await uidGid('mysql');
    // The server creates its socket here.
    await chown(dir, uid, gid);
    await must('mariadb-install-db', ['--no-defaults', '--user=mysql', `--datadir=${join(dir, 'data')}`, '--auth-root-authentication-method=socket', '--skip-test-db']);
    await writeFile(s.optionFile, `[client]\nuser=root\nsocket=${s.socket}\n`, { mode: 0o600 });
    await s.boot();
    await s.sql('CREATE DATABASE t; CREATE TABLE t.a (x INT) ENGINE=InnoDB; CREATE TABLE t.b (x INT) ENGINE=InnoDB');
    return s;
  }

  async boot(): Promise<void> {
    const args = ['--no-defaults', '--user=mysql', `--datadir=${join(this.dir, 'data')}`, `--socket=${this.socket}`, `--pid-file=${join(this.dir, 'mysqld.pid')}`, '--skip-networking', `--log-error=${join(this.dir, 'error.log')}`, '--innodb-buffer-pool-size=32M'];
    const p = spawn('mariadbd', args, { stdio: 'ignore' });
    this.process = p;
    await waitFor('MariaDB to accept connections', async () => {
      if (p.exitCode !== null) throw new Error(`mariadbd exited ${p.exitCode}: ${await readFile(join(this.dir, 'error.log'), 'utf8').catch(() => '')}`);
      return (await run('mariadb', [`--defaults-extra-file=${this.optionFile}`, '-e', 'SELECT 1'])).code === 0 ? true : undefined;
    });
  }

  async stop(): Promise<void> {
    const p = this.process;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await gone;
    this.process = undefined;
  }

  /** Runs statements as root through the option file; throws on error. */
  async sql(statements: string, timeoutMs = 30_000): Promise<string> {
    const r = await run('mariadb', [`--defaults-extra-file=${this.optionFile}`, '--batch', '--skip-column-names'], { input: statements, timeoutMs });
    if (r.code !== 0) throw new Error(`mariadb: ${r.stderr}`);
    return r.stdout;
  }

  /** Starts statements in their own session and returns it running (e.g. a write that blocks). */
  session(statements: string): Promise<Exit> {
    return run('mariadb', [`--defaults-extra-file=${this.optionFile}`, '--batch', '--skip-column-names'], { input: statements, timeoutMs: 120_000 });
  }

  /** Sessions whose statement waits for a lock (State "Waiting for …lock…"), with their query. */
  async waitingForLock(): Promise<string[]> {
    const out = await this.sql("SELECT INFO FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for%lock%'");
    return out.split('\n').filter(Boolean);
  }
}

export class PostgresServer {
  readonly bin = '/usr/lib/postgresql/15/bin';
  private constructor(readonly dir: string) {}

  get socketDir(): string {
    return this.dir;
  }

  static async start(dir: string): Promise<PostgresServer> {
    if (userInfo().uid !== 0) throw new Error('the PostgreSQL tests run as root (the server runs as postgres); set BLOCKREP_SKIP_DB_TESTS=1 to skip them');
    await openFolder(dir);
    const s = new PostgresServer(dir);
    if (!(await exists(join(s.bin, 'initdb')))) throw new Error(`PostgreSQL 15 is not installed (${s.bin}/initdb); scripts/install-deps.sh installs it`);
    const { uid, gid } = await uidGid('postgres');
    await chown(dir, uid, gid);
    await must('runuser', ['-u', 'postgres', '--', join(s.bin, 'initdb'), '-D', join(dir, 'data'), '-A', 'peer', '--no-sync']);
    await s.boot();
    return s;
  }

  async boot(): Promise<void> {
    const opts = `-c listen_addresses='' -c unix_socket_directories=${this.dir} -c fsync=off -c shared_buffers=16MB`;
    await must('runuser', ['-u', 'postgres', '--', join(this.bin, 'pg_ctl'), '-D', join(this.dir, 'data'), '-o', opts, '-l', join(this.dir, 'server.log'), '-w', 'start']);
  }

  async stop(): Promise<void> {
    if (!(await exists(join(this.dir, 'data', 'postmaster.pid')))) return;
    await must('runuser', ['-u', 'postgres', '--', join(this.bin, 'pg_ctl'), '-D', join(this.dir, 'data'), '-m', 'fast', '-w', 'stop']);
  }

  /** Runs SQL as the postgres user (peer authentication); returns unaligned tuples. */
  async sql(statement: string): Promise<string> {
    return (await must('runuser', ['-u', 'postgres', '--', 'psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', this.dir, '-d', 'postgres', '-c', statement])).trim();
  }
}

export interface HookEnv {
  state: string;
  logFile: string;
  /** The hook's settings file (BLOCKREP_FSFREEZE_CONF). */
  conf: string;
}

/** A folder for the hooks' state, log and settings file. */
export async function hookEnv(dir: string, settings: Record<string, string>): Promise<HookEnv> {
  await mkdir(dir, { recursive: true });
  const env = { state: join(dir, 'run'), logFile: join(dir, 'hook.log'), conf: join(dir, 'blockrep-fsfreeze') };
  await writeFile(env.conf, Object.entries(settings).map(([k, v]) => `${k}='${v}'\n`).join(''));
  await writeFile(env.logFile, '');
  return env;
}

/** Runs a hook as qemu-ga's hook runner does: `sh HOOK freeze|thaw`. */
export function runHook(name: string, phase: 'freeze' | 'thaw', env: HookEnv, extra: Record<string, string> = {}): Promise<Exit> {
  return run('sh', [join(ROOT, 'guest/fsfreeze-hook.d', name), phase], {
    env: { BLOCKREP_FSFREEZE_CONF: env.conf, BLOCKREP_FSFREEZE_STATE: env.state, BLOCKREP_FSFREEZE_LOGFILE: env.logFile, ...extra },
    timeoutMs: 120_000,
  });
}

/** The pids a hook recorded in its state folder (session, keeper, timer). */
export async function hookPids(env: HookEnv, name: string): Promise<number[]> {
  const pids: number[] = [];
  for (const f of ['client.pid', 'keeper.pid', 'sleeper.pid']) {
    const text = await readFile(join(env.state, name, f), 'utf8').catch(() => '');
    if (/^\d+\s*$/.test(text)) pids.push(Number(text));
  }
  return pids;
}

/** Running (a zombie waiting for a parent that does not reap it has ended). */
export async function isAlive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat !== undefined && !/^\d+ \(.*\) Z/.test(stat);
}
