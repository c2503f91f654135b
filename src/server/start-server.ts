import { rm, mkdir } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { LocalBackend } from '../backend/index.js';
import { Repository } from '../repository/index.js';
import { BlockrepError, wrapSystemError, isLoopback, urlFor, type ListenAddress } from '../shared/index.js';
import { createRequestHandler } from './repository-server.js';
import { TokenStore } from './token-store.js';

/** Hidden from listings (LocalBackend skips ".tmp-" names) and on the repository's disk. */
const SPOOL_DIR = '.tmp-uploads';

export interface ServeOptions {
  root: string;
  listen: ListenAddress;
  tokensFile?: string;
  /** Without tokens, only loopback addresses are allowed unless this is set. */
  insecureNoAuth?: boolean;
  tls?: { cert: Buffer; key: Buffer };
  log: (line: string) => void;
}

export interface RunningServer {
  url: string;
  /** Stops accepting, lets requests in flight finish (for at most `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Opens (or creates, in an empty or new folder) the repository at `root` on a LocalBackend and
 * serves it. Refuses, with a message that says how, to listen beyond loopback without tokens.
 */
export async function startRepositoryServer(options: ServeOptions): Promise<RunningServer> {
  if (options.tokensFile === undefined && !isLoopback(options.listen.host) && !options.insecureNoAuth) {
    throw new BlockrepError(
      'USAGE',
      `refusing to listen on ${options.listen.host} without --tokens: anyone who can reach it could read and overwrite backups. ` +
        'Give --tokens FILE (see `blockrep token create`), or --insecure-no-auth on a network you trust completely',
    );
  }
  if (options.tokensFile !== undefined && options.insecureNoAuth) throw new BlockrepError('USAGE', '--insecure-no-auth and --tokens exclude each other');
  const tokens = await TokenStore.open(options.tokensFile);
  const root = resolve(options.root);
  const backend = new LocalBackend(root);
  const repo = await Repository.open(backend, { create: true });
  const spoolDir = join(root, SPOOL_DIR);
  try {
    await rm(spoolDir, { recursive: true, force: true }); // uploads cut short by a previous run
    await mkdir(spoolDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw wrapSystemError(err, `preparing ${spoolDir}`);
  }

  const handler = createRequestHandler({ repo, store: backend, tokens, spoolDir, log: options.log, redact: (m) => m.replaceAll(root, '<repository>') });
  const server: Server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
  // Slow or stalled clients cannot hold a connection forever; keep-alive outlives the client's
  // idle timeout so the server is not the one closing a connection as a request arrives.
  server.headersTimeout = 30_000;
  server.requestTimeout = 60 * 60_000;
  server.keepAliveTimeout = 65_000;
  // A socket silent this long is dead; long enough for the server to check a large manifest.
  server.timeout = 10 * 60_000;
  server.maxHeadersCount = 64;
  server.maxConnections = 1024;

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', (err) => reject(wrapSystemError(err, `listening on ${options.listen.host}:${options.listen.port}`)));
    server.listen(options.listen.port, options.listen.host, () => resolveListen());
  });
  const address = server.address() as AddressInfo;
  const url = urlFor(options.tls ? 'https' : 'http', options.listen.host, address.port);

  return {
    url,
    close: async (graceMs = 5000) => {
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      await closed;
      clearTimeout(timer);
      await backend.close();
    },
  };
}
