import { rm, mkdir } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { LocalBackend } from '../backend/index.js';
import { Repository } from '../repository/index.js';
import { BlockrepError, wrapSystemError, isLoopback, urlFor, type ListenAddress, type SyncLevel } from '../shared/index.js';
import { createRequestHandler } from './repository-server.js';
import { serverLimitsFromEnv, type ServerLimits } from './server-limits.js';
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
  /** Per-client limits; by default those of server-limits.ts, overridden by BLOCKREP_SERVE_* variables. */
  limits?: ServerLimits;
  /**
   * How uploaded chunks become durable before a version that refers to them is stored
   * (shared/sync-level.ts; default `filesystem`: one syncfs of the root's file system).
   */
  syncLevel?: SyncLevel;
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
  const limits = options.limits ?? serverLimitsFromEnv(process.env);
  const tokens = await TokenStore.open(options.tokensFile);
  const root = resolve(options.root);
  // Whatever else is in the folder, the server reads and writes only regular files and folders
  // under it: a symbolic link planted inside must not lead it elsewhere.
  const backend = new LocalBackend(root, { noFollow: true, ...(options.syncLevel !== undefined ? { syncLevel: options.syncLevel } : {}) });
  const repo = await Repository.open(backend, { create: true });
  const spoolDir = join(root, SPOOL_DIR);
  try {
    await rm(spoolDir, { recursive: true, force: true }); // uploads cut short by a previous run
    await mkdir(spoolDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw wrapSystemError(err, `preparing ${spoolDir}`);
  }

  const handle = createRequestHandler({ repo, store: backend, tokens, spoolDir, log: options.log, limits, redact: (m) => m.replaceAll(root, '<repository>') });
  const refused = new WeakSet<Socket>();
  const handler: typeof handle = (req, res) => {
    if (refused.has(req.socket)) req.socket.destroy();
    else handle(req, res);
  };
  const server: Server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
  limitConnectionsPerAddress(server, limits.connectionsPerAddress, !options.tls, refused, options.log);
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

/** The answer to a connection over its address's limit, written before any request is read. */
const TOO_MANY_CONNECTIONS = (() => {
  const body = JSON.stringify({ code: 'UNAVAILABLE', message: 'too many connections from this address: retry shortly' });
  return `HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-blockrep-code: UNAVAILABLE\r\nretry-after: 1\r\nconnection: close\r\n\r\n${body}`;
})();

/**
 * One address may hold at most `max` connections (the server's 1024 are for everybody): the
 * next is refused at once — with a 503 over plain HTTP, closed over TLS (no handshake is spent
 * on it) — and counted once, in the log.
 */
function limitConnectionsPerAddress(server: Server, max: number, plain: boolean, refused: WeakSet<Socket>, log: (line: string) => void): void {
  const open = new Map<string, number>();
  const noted = new Set<string>();
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? '-';
    const count = open.get(address) ?? 0;
    if (count >= max) {
      refused.add(socket);
      if (!noted.has(address)) {
        noted.add(address);
        log(`${new Date().toISOString()} refusing connections from ${address}: it holds ${max}, its limit`);
      }
      if (plain) socket.end(TOO_MANY_CONNECTIONS);
      else socket.destroy();
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    open.set(address, count + 1);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left > 0) open.set(address, left);
      else {
        open.delete(address);
        noted.delete(address);
      }
    });
  });
}
