import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { DEFAULT_LISTEN, isLoopback, parseListenAddress, parseSyncLevel, BlockrepError, systemErrorCode, wrapSystemError } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';

interface ServeOptions {
  root: string;
  listen: string;
  tokens?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecureNoAuth?: boolean;
  syncLevel?: string;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve a repository over HTTP(S) to blockrep clients (--repo http(s)://HOST:PORT); prints "listening on URL" first, then logs one line per request on stderr')
    .requiredOption('--root <dir>', 'repository directory (created when new or empty)')
    .option('--listen <host:port>', 'address to listen on, HOST:PORT or [IPv6]:PORT', DEFAULT_LISTEN)
    .option('--tokens <file>', 'access tokens file (see `blockrep token`); re-read whenever it changes')
    .option('--tls-cert <file>', 'serve HTTPS with this certificate (PEM; with --tls-key)')
    .option('--tls-key <file>', 'private key (PEM) of --tls-cert')
    .option('--insecure-no-auth', 'allow a non-loopback --listen without --tokens (anyone who reaches it has every right)')
    .option('--sync-level <level>', 'how uploaded chunks become durable before a version is stored: filesystem (one syncfs of the root\'s file system, the default) or file (an fsync per chunk)')
    .action(async (opts: ServeOptions) => {
      await runCommand(false, async (ctx) => {
        const listen = parseListenAddress(opts.listen);
        const syncLevel = opts.syncLevel === undefined ? undefined : parseSyncLevel(opts.syncLevel);
        if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) throw new BlockrepError('USAGE', '--tls-cert and --tls-key go together');
        const tls = opts.tlsCert !== undefined && opts.tlsKey !== undefined ? { cert: await readPem(opts.tlsCert, '--tls-cert'), key: await readPem(opts.tlsKey, '--tls-key') } : undefined;
        // The server's code (and TLS) is loaded only when serving: every other command starts faster.
        const { startRepositoryServer } = await import('../../server/index.js');
        const server = await startRepositoryServer({
          root: opts.root,
          listen,
          ...(opts.tokens !== undefined ? { tokensFile: opts.tokens } : {}),
          ...(opts.insecureNoAuth ? { insecureNoAuth: true } : {}),
          ...(syncLevel !== undefined ? { syncLevel } : {}),
          ...(tls ? { tls } : {}),
          log: (line) => process.stderr.write(`${line}\n`),
        });
        // The first line of stdout: scripts and tests read the address (port 0 picks one) here.
        process.stdout.write(`listening on ${server.url}\n`);
        if (!tls && !isLoopback(listen.host)) {
          process.stderr.write('blockrep: warning: serving without TLS beyond loopback: tokens and data cross the network in clear text\n');
        }
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted) resolve();
          ctx.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        await server.close();
        return { exitCode: EXIT_OK, json: { ok: true }, text: 'server stopped' };
      });
    });
}

async function readPem(path: string, option: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('USAGE', `${option} ${path} does not exist`);
    throw wrapSystemError(err, `reading ${option} ${path}`);
  }
}
