import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import {
  CONFIG_PATH,
  FLUSH_PATH,
  LIST_PATH,
  MAX_JSON_BODY_BYTES,
  OBJECTS_PATH,
  SIZES_PATH,
  sizesRequestSchema,
  PATCH_PLANS_PATH,
  CHUNK_PATCH_TYPE,
  IF_OLDER_THAN_HEADER,
  REMOVAL_HEADER,
  SWEEP_TEMPS_PATH,
  sweepTempsRequestSchema,
  AGE_HEADER,
} from '../protocol/index.js';
import { planPatches, receiveChunkPatch } from './chunk-patch-upload.js';
import { PatchBaseCache } from './patch-base-cache.js';
import type { Backend, BackendObject } from '../backend/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { authorizeCollectGarbage, authorizeFlush, authorizeList, authorizeObject, authorizePatching, listedKeyVisible, mayBreakLock, type Method, type Principal } from './access-policy.js';
import { ByteBudget } from './byte-budget.js';
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from './server-limits.js';
import { receiveChunk } from './chunk-upload.js';
import { declaredLength, readJson, sendEmpty, sendError, sendJson, writePiece } from './http-io.js';
import { receiveConfig, receiveKeyFile } from './config-upload.js';
import { receiveLock } from './lock-upload.js';
import { receiveManifest } from './manifest-upload.js';
import { diskOfListedKey, keyFromPath, parseListPrefix, parseObjectKey, type ListScope, type ObjectRef } from './object-key.js';
import type { RequestContext } from './request-context.js';
import type { TokenStore } from './token-store.js';

/** Pieces a GET streams an object in: memory per download stays at this. */
const READ_PIECE_BYTES = 1024 * 1024;
/** NDJSON lines are gathered into writes of about this size. */
const LIST_WRITE_BYTES = 64 * 1024;
/** A request's log line waits at most this long after its close for its handler to settle. */
const LOG_WAIT_MS = 2000;

const rangeSchema = z.string().regex(/^bytes=\d{1,15}-\d{0,15}$/, 'only a single range "bytes=a-b" or "bytes=a-" is supported');
const ifNoneMatchSchema = z.literal('*', { message: 'only If-None-Match: * is supported' });
/** If-Match: one content tag (backend.ts contentTag), on locks only. */
const ifMatchSchema = z.string().regex(/^"[0-9a-f]{64}"$/);
const listQuerySchema = z.object({ prefix: z.string().max(512) }).strict();

export interface RepositoryServerOptions {
  repo: Repository;
  /**
   * The objects the server serves and stores: the repository's own backend, named here because
   * the server is an object store under the repository's grammar (reads, conditional writes,
   * listings); domain checks (manifests, chunk presence) go through `repo`.
   */
  store: Backend;
  tokens: TokenStore;
  /** Where manifest uploads are spooled while they are checked (on the repository's disk). */
  spoolDir: string;
  /** One line per request (and the detail of server-side failures). */
  log: (line: string) => void;
  /** Hides server paths in messages to clients. */
  redact?: (message: string) => string;
  /** Memory, body rate and work per client (server-limits.ts); the defaults where not given. */
  limits?: Partial<ServerLimits>;
}

/**
 * The HTTP API of `blockrep serve` (the routes are listed in backend/http/http-protocol.ts) in
 * front of one Repository. Every request is authenticated, its key parsed against the
 * repository's grammar and authorised before any storage is touched; uploads are checked
 * before they are stored.
 */
export function createRequestHandler(options: RepositoryServerOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const limits = { ...DEFAULT_SERVER_LIMITS, ...options.limits };
  const budget = new ByteBudget(limits.memoryBytes, limits.clientMemoryBytes, limits.memoryWaitMs);
  const bases = new PatchBaseCache(options.repo);
  const redact = options.redact ?? ((m: string) => m);
  const bodyRate = { minBytes: limits.minBodyBytes, windowMs: limits.bodyWindowMs };
  return (req, res) => {
    const started = performance.now();
    const lease = budget.lease([`address:${req.socket.remoteAddress ?? '-'}`]);
    const ctx: RequestContext = { req, res, kind: '-', token: '-', bytesIn: 0, bytesOut: 0, redact, lease, bodyRate };
    const handled = handle(options, limits, bases, ctx)
      .catch((err: unknown) => {
        if (clientHungUp(ctx, err)) {
          ctx.aborted = true;
          ctx.res.destroy();
          return;
        }
        const detail = sendError(ctx, err);
        if (detail !== undefined) options.log(`error: ${req.method ?? '-'} ${ctx.kind}: ${detail}`);
      })
      .finally(() => lease.release());
    res.on('close', () => {
      lease.release();
      const ms = performance.now() - started;
      // Logged once the handler has settled too, so that the line says how the request ended
      // (a client that hung up is seen by the handler after the close).
      let timer: NodeJS.Timeout | undefined;
      void Promise.race([handled, new Promise<void>((r) => (timer = setTimeout(r, LOG_WAIT_MS)))]).then(() => {
        clearTimeout(timer);
        options.log(logLine(ctx, ms));
      });
    });
  };
}

/**
 * The request failed because its client went away (hung up mid-body, or while its answer was
 * being made): not the server's failure, and nobody is left to answer. A coded error of the
 * server's own (IO, NO_SPACE) is still reported as such.
 */
function clientHungUp(ctx: RequestContext, err: unknown): boolean {
  if (ctx.aborted) return true;
  const gone = ctx.req.socket.destroyed || (ctx.res.destroyed && !ctx.res.writableFinished);
  return gone && !(isBlockrepError(err) && err.code !== 'INTERRUPTED');
}

function logLine(ctx: RequestContext, ms: number): string {
  const status = ctx.res.headersSent ? ctx.res.statusCode : 0;
  const cut = ctx.aborted ? ' (aborted by the client)' : ctx.res.writableFinished ? '' : ' (cut)';
  return `${new Date().toISOString()} ${ctx.req.method ?? '-'} ${ctx.kind} ${status}${cut} in=${ctx.bytesIn} out=${ctx.bytesOut} ${ms.toFixed(0)}ms token=${ctx.token}${ctx.code ? ` code=${ctx.code}` : ''}`;
}

async function handle(options: RepositoryServerOptions, limits: ServerLimits, bases: PatchBaseCache, ctx: RequestContext): Promise<void> {
  const target = ctx.req.url ?? '';
  if (!target.startsWith('/')) throw new BlockrepError('BAD_REQUEST', 'the request target must be a path');
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const query = q < 0 ? '' : target.slice(q + 1);
  const method = ctx.req.method ?? '';

  const principal = await options.tokens.authenticate(ctx.req.headers.authorization);
  ctx.token = principal.name;
  // One token's share of memory, whichever addresses it comes from (none without tokens).
  if (options.tokens.enabled) ctx.lease.addClient(`token:${principal.name}`);

  if (path.startsWith(OBJECTS_PATH)) {
    if (query !== '') throw new BlockrepError('BAD_REQUEST', 'object requests take no query');
    if (method !== 'HEAD' && method !== 'GET' && method !== 'PUT' && method !== 'DELETE') {
      throw new BlockrepError('METHOD_NOT_ALLOWED', `${method} is not an operation on objects`);
    }
    const ref = parseObjectKey(keyFromPath(path.slice(OBJECTS_PATH.length)));
    ctx.kind = ref.kind;
    authorizeObject(principal, method, ref);
    if (method === 'DELETE' && ctx.req.headers[IF_OLDER_THAN_HEADER] !== undefined) return removeIfOlder(options.store, ctx, ref, principal);
    return handleObject(options, bases, principal, ctx, method, ref);
  }
  switch (path) {
    case CONFIG_PATH:
      ctx.kind = 'config';
      requireMethod(method, 'GET', query);
      return sendJson(ctx, 200, options.repo.config);
    case LIST_PATH:
      ctx.kind = 'list';
      requireMethod(method, 'GET', '');
      noBody(ctx);
      return handleList(options, ctx, principal, query);
    case SIZES_PATH: {
      ctx.kind = 'sizes';
      requireMethod(method, 'POST', query);
      const { keys, touch } = await readJson(ctx, sizesRequestSchema, MAX_JSON_BODY_BYTES, 'a sizes request');
      for (const key of keys) {
        const ref = parseObjectKey(key);
        authorizeObject(principal, 'HEAD', ref);
        if (touch && ref.kind !== 'chunk') throw new BlockrepError('BAD_REQUEST', 'only chunks are touched');
      }
      // Touching (a dedup hit the caller will refer to: gc keeps it) serves writing.
      if (touch) authorizeFlush(principal);
      const sizes = await options.store.sizes(keys, touch ? { touch: true } : {});
      return sendJson(ctx, 200, { sizes: sizes.map((s) => s ?? null) });
    }
    case PATCH_PLANS_PATH:
      ctx.kind = 'patch-plans';
      requireMethod(method, 'POST', query);
      authorizePatching(principal);
      refuseIfEncrypted(options.repo, 'chunk patches');
      return sendJson(ctx, 200, await planPatches(bases, ctx, limits.planBaseBytes));
    case SWEEP_TEMPS_PATH: {
      ctx.kind = 'sweep-temps';
      requireMethod(method, 'POST', query);
      authorizeCollectGarbage(principal);
      const { olderThanMs } = await readJson(ctx, sweepTempsRequestSchema, MAX_JSON_BODY_BYTES, 'a temp sweep');
      const backend = options.store;
      return sendJson(ctx, 200, backend.removeStaleTemps ? await backend.removeStaleTemps(olderThanMs) : { files: 0, bytes: 0 });
    }
    case FLUSH_PATH:
      ctx.kind = 'flush';
      requireMethod(method, 'POST', query);
      noBody(ctx);
      authorizeFlush(principal);
      await options.repo.flush();
      return sendEmpty(ctx, 204);
    default:
      throw new BlockrepError('BAD_REQUEST', 'no such endpoint (this is a blockrep repository server, API /v1)');
  }
}

/** Patches and manifest deltas need the plaintext: an encrypted repository takes whole sealed objects. */
function refuseIfEncrypted(repo: Repository, what: string): void {
  if (repo.encrypted) throw new BlockrepError('BAD_REQUEST', `the repository is encrypted: the server cannot read ${what}; send whole sealed objects`);
}

function requireMethod(method: string, allowed: string, query: string): void {
  if (method !== allowed) throw new BlockrepError('METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${allowed}`);
  if (query !== '') throw new BlockrepError('BAD_REQUEST', 'this endpoint takes no query');
}

/** Garbage collection's removal of a chunk: only if old, race-free against touches (sizes). */
async function removeIfOlder(store: Backend, ctx: RequestContext, ref: ObjectRef, principal: Principal): Promise<void> {
  noBody(ctx);
  const olderThan = ctx.req.headers[IF_OLDER_THAN_HEADER];
  if (ref.kind !== 'chunk' || typeof olderThan !== 'string' || !/^\d{1,15}$/.test(olderThan)) {
    throw new BlockrepError('BAD_REQUEST', `${IF_OLDER_THAN_HEADER} applies to chunks and takes ms since the epoch`);
  }
  authorizeCollectGarbage(principal);
  if (!store.removeIfOlder) throw new BlockrepError('METHOD_NOT_ALLOWED', 'this repository cannot remove chunks conditionally');
  return sendEmpty(ctx, 204, { [REMOVAL_HEADER]: await store.removeIfOlder(ref.key, Number(olderThan)) });
}

function noBody(ctx: RequestContext): void {
  if ((declaredLength(ctx) ?? 0) > 0 || ctx.req.headers['transfer-encoding'] !== undefined) {
    throw new BlockrepError('BAD_REQUEST', `${ctx.req.method} takes no body here`);
  }
}

async function handleObject(options: RepositoryServerOptions, bases: PatchBaseCache, principal: Principal, ctx: RequestContext, method: Method, ref: ObjectRef): Promise<void> {
  const { repo, store } = options;
  switch (method) {
    case 'HEAD':
    case 'GET':
      noBody(ctx);
      return sendObject(store, ctx, ref);
    case 'DELETE': {
      noBody(ctx);
      const tag = ifMatchOf(ctx, ref);
      // A lock is a lease: only its holder, naming the lock it holds, may end it (or an admin of the disk, on purpose).
      if (ref.kind === 'lock' && tag === undefined && !mayBreakLock(principal, ref.diskId)) {
        throw new BlockrepError('BAD_REQUEST', 'a lock is removed with If-Match: "<sha256 of the lock>" (the lock its holder wrote); only an admin of the disk may remove it unconditionally');
      }
      if (tag !== undefined) {
        if (!store.replaceIfMatch) throw new BlockrepError('METHOD_NOT_ALLOWED', 'this repository cannot remove locks conditionally');
        if (!(await store.replaceIfMatch(ref.key, tag, null))) throw new BlockrepError('CHANGED', `${ref.key} is not the one named by If-Match`);
        return sendEmpty(ctx, 204);
      }
      await store.remove(ref.key);
      return sendEmpty(ctx, 204);
    }
    case 'PUT': {
      const ifNoneMatch = ctx.req.headers['if-none-match'];
      if (ifNoneMatch !== undefined && !ifNoneMatchSchema.safeParse(ifNoneMatch).success) {
        throw new BlockrepError('BAD_REQUEST', 'only If-None-Match: * is supported');
      }
      const ifMatch = ifMatchOf(ctx, ref); // refused (400) on anything but a lock
      let stored: number;
      switch (ref.kind) {
        case 'chunk':
          if (ctx.req.headers['content-type'] === CHUNK_PATCH_TYPE) {
            authorizePatching(principal);
            refuseIfEncrypted(repo, 'chunk patches');
            stored = await receiveChunkPatch(repo, bases, ref.chunkId, ctx);
          } else {
            stored = await receiveChunk(repo, ref.chunkId, ctx);
          }
          break;
        case 'manifest':
          stored = await receiveManifest(repo, store, options.spoolDir, ref, ctx);
          break;
        case 'lock':
          // A lock is a lease: taken only if free, replaced only by who holds it (disk-lock.ts).
          if (ifNoneMatch === '*' && ifMatch !== undefined) throw new BlockrepError('BAD_REQUEST', 'If-None-Match and If-Match exclude each other');
          if (ifNoneMatch !== '*' && ifMatch === undefined && !mayBreakLock(principal, ref.diskId)) {
            throw new BlockrepError('BAD_REQUEST', 'a lock is written with If-None-Match: * (taken only if free) or If-Match: "<sha256 of the lock>" (renewed or taken over); only an admin of the disk may write it unconditionally');
          }
          stored = await receiveLock(store, ref, ctx, ifNoneMatch === '*', ifMatch);
          break;
        case 'config':
          stored = await receiveConfig(repo, store, ctx);
          break;
        case 'key':
          stored = await receiveKeyFile(repo, store, ref, ctx);
          break;
      }
      return sendEmpty(ctx, 201, { 'x-blockrep-stored-bytes': stored });
    }
  }
}

/** The content tag of an If-Match header (locks only: how leases are renewed and released). */
function ifMatchOf(ctx: RequestContext, ref: ObjectRef): string | undefined {
  const header = ctx.req.headers['if-match'];
  if (header === undefined) return undefined;
  if (ref.kind !== 'lock' || !ifMatchSchema.safeParse(header).success) throw new BlockrepError('BAD_REQUEST', 'If-Match takes one content tag ("<sha256 hex>"), on locks only');
  return header.slice(1, -1);
}

/** HEAD/GET of an object, whole or one range, streamed piece by piece through the backend. */
async function sendObject(store: Backend, ctx: RequestContext, ref: ObjectRef): Promise<void> {
  const size = await store.size(ref.key);
  if (size === undefined) throw new BlockrepError('NOT_FOUND', `${ref.key} does not exist`);
  let start = 0;
  let end = size; // exclusive
  const range = ctx.req.headers.range;
  if (range !== undefined) {
    const parsed = rangeSchema.safeParse(range);
    if (!parsed.success) throw new BlockrepError('BAD_REQUEST', 'only a single range "bytes=a-b" or "bytes=a-" is supported');
    const [a, b] = parsed.data.slice('bytes='.length).split('-') as [string, string];
    start = Number(a);
    end = b === '' ? size : Math.min(size, Number(b) + 1);
    if (b !== '' && Number(b) < start) throw new BlockrepError('BAD_REQUEST', 'a range must not end before it starts');
    if (start >= size) {
      // Not an error of the repository: the client reads past the end (an empty read).
      return sendEmpty(ctx, 416, { 'content-range': `bytes */${size}` });
    }
  }
  const headers: Record<string, string | number> = {
    'content-type': ref.kind === 'config' ? 'application/json' : 'application/octet-stream',
    'content-length': end - start,
    'accept-ranges': 'bytes',
    'cache-control': 'no-store',
  };
  if (range !== undefined) headers['content-range'] = `bytes ${start}-${end - 1}/${size}`;
  if (ref.kind === 'lock') {
    // Lock leases are judged by the repository's clock (disk-lock.ts).
    const age = await store.objectAgeMs?.(ref.key);
    if (age === undefined) throw new BlockrepError('NOT_FOUND', `${ref.key} does not exist`);
    headers[AGE_HEADER] = Math.round(age);
  }
  ctx.res.writeHead(range !== undefined ? 206 : 200, headers);
  if (ctx.req.method === 'HEAD') {
    ctx.res.end();
    return;
  }
  for (let pos = start; pos < end; ) {
    const piece = await store.read(ref.key, pos, Math.min(READ_PIECE_BYTES, end - pos));
    if (piece.length === 0) throw new BlockrepError('IO', `${ref.key} shrank while being sent`);
    if (!(await writePiece(ctx, piece))) return;
    pos += piece.length;
  }
  ctx.res.end();
}

async function handleList(options: RepositoryServerOptions, ctx: RequestContext, principal: Principal, query: string): Promise<void> {
  const params = new URLSearchParams(query);
  if (params.getAll('prefix').length !== 1) throw new BlockrepError('BAD_REQUEST', 'a listing takes exactly one prefix parameter');
  const parsed = listQuerySchema.safeParse(Object.fromEntries(params));
  if (!parsed.success) throw new BlockrepError('BAD_REQUEST', 'a listing takes only ?prefix=…');
  const { prefix } = parsed.data;
  const scope = parseListPrefix(prefix);
  authorizeList(principal, scope);
  const filter = scope.kind === 'disks' || scope.kind === 'locks';
  ctx.res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  let pending = '';
  let count = 0;
  for await (const obj of listVisible(options.store, principal, prefix, scope)) {
    if (filter && !listedKeyVisible(principal, diskOfListedKey(obj.key))) continue;
    pending += `${JSON.stringify(obj.mtimeMs === undefined ? { key: obj.key, size: obj.size } : { key: obj.key, size: obj.size, mtimeMs: Math.floor(obj.mtimeMs) })}\n`;
    count++;
    if (pending.length >= LIST_WRITE_BYTES) {
      if (!(await writePiece(ctx, Buffer.from(pending)))) return;
      pending = '';
    }
  }
  // The end line tells a complete listing from one cut short by a dropped connection.
  pending += `${JSON.stringify({ end: true, count })}\n`;
  await writePiece(ctx, Buffer.from(pending));
  ctx.res.end();
}

/**
 * The objects under `prefix`; for disks/ and a token that may not read every disk, only the
 * folders of the disks it may read are walked (when the store can name its folders), so a
 * narrow token's listing costs what it may see, not the whole repository.
 */
async function* listVisible(store: Backend, principal: Principal, prefix: string, scope: ListScope): AsyncIterable<BackendObject> {
  if (scope.kind !== 'disks' || !store.folders || listedKeyVisible(principal, undefined)) {
    yield* store.list(prefix);
    return;
  }
  for (const folder of await store.folders(prefix)) {
    if (listedKeyVisible(principal, diskOfListedKey(`${prefix}${folder}/`))) yield* store.list(`${prefix}${folder}/`);
  }
}
