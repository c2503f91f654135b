import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/blockrep.js', import.meta.url));

export interface ServerOptions {
  root: string;
  tokensFile?: string;
  tls?: { cert: string; key: string };
  /** Default 127.0.0.1:0 (a free port). */
  listen?: string;
  extraArgs?: string[];
  env?: Record<string, string>;
}

export interface RunningTestServer {
  url: string;
  root: string;
  process: ChildProcess;
  /** Everything the server wrote on stderr so far (its request log). */
  stderr(): string;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** The serve arguments for `options`. */
export function serveArgs(options: ServerOptions): string[] {
  const args = ['serve', '--root', options.root, '--listen', options.listen ?? '127.0.0.1:0'];
  if (options.tokensFile !== undefined) args.push('--tokens', options.tokensFile);
  if (options.tls) args.push('--tls-cert', options.tls.cert, '--tls-key', options.tls.key);
  args.push(...(options.extraArgs ?? []));
  return args;
}

/**
 * Starts the real `blockrep serve` (the built CLI) on a free loopback port and resolves with
 * the URL from the first line of its stdout ("listening on URL").
 */
export function startServer(options: ServerOptions): Promise<RunningTestServer> {
  const child = spawn(process.execPath, [BIN, ...serveArgs(options)], { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    running.delete(child);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`blockrep serve did not start in time: ${stderr}`));
    }, 30_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      const before = stdout;
      stdout += d;
      if (before.includes('\n')) return;
      const line = /^listening on (\S+)\n/.exec(stdout);
      if (line) {
        clearTimeout(timer);
        resolve({ url: line[1]!, root: options.root, process: child, stderr: () => stderr, stop });
      } else if (stdout.includes('\n')) {
        clearTimeout(timer);
        void stop();
        reject(new Error(`unexpected first line from blockrep serve: ${stdout}`));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`blockrep serve exited with ${code}: ${stderr}`));
    });
  });
}
