import { BlockrepError, isBlockrepError } from '../../shared/index.js';
import { type Backend, type BackendObject, type ConditionalRemoval, type SizesOptions, type TempSweep, type WriteOptions } from '../index.js';
import { errorFromResponse } from './http-error.js';
import {
  MANIFEST_DELTA_TYPE,
  CHUNK_PATCH_TYPE,
  MAX_PATCH_PLAN_ITEMS,
  PATCH_PLANS_PATH,
  patchPlanResponseSchema,
  AGE_HEADER,
  ERROR_CODE_HEADER,
  FLUSH_PATH,
  listLineSchema,
  listPath,
  MAX_LIST_LINE_BYTES,
  objectPath,
  SIZES_PATH,
  sizesResponseSchema,
  IF_OLDER_THAN_HEADER,
  REMOVAL_HEADER,
  removalSchema,
  SWEEP_TEMPS_PATH,
  sweepTempsResponseSchema,
} from '../../protocol/index.js';
import { HttpTransport, type HttpResponse, type HttpTransportOptions } from './http-transport.js';
import { spoolBody, type ReplayableBody } from './replayable-body.js';

/** Keys per POST /v1/sizes (the server takes up to MAX_SIZES_KEYS), and batches in flight. */
const SIZES_BATCH = 1000;
const SIZES_CONCURRENCY = 4;
/** A whole-object read (chunks, config, locks) larger than this is refused: memory is bounded. */
const MAX_WHOLE_READ_BYTES = 256 * 1024 * 1024;
/** Compare an object with a body in pieces of this size. */
const COMPARE_BYTES = 4 * 1024 * 1024;
/** Uploads get this much extra time for their answer per MiB sent (the server checks them). */
const HEADERS_MS_PER_MIB = 1000;

export type HttpBackendOptions = HttpTransportOptions;

/**
 * A repository on a `blockrep serve`, over HTTP(S): each Backend call is one request of the
 * generic object API (http-protocol.ts), so the repository layer above is the same code on
 * both ends. A streamed write is spooled to a temporary file first, so it is retried whole like
 * a Uint8Array one.
 */
export class HttpBackend implements Backend {
  readonly location: string;
  /** Manifests read from here are worth keeping in the client's cache (manifest-cache.ts). */
  readonly remote = true;
  /** Shared with layers that add requests of their own (manifest deltas). */
  readonly transport: HttpTransport;

  constructor(options: HttpBackendOptions | HttpTransport) {
    this.transport = options instanceof HttpTransport ? options : new HttpTransport(options);
    this.location = this.transport.location;
  }

  async size(key: string): Promise<number | undefined> {
    return this.transport.exchange({ method: 'HEAD', path: objectPath(key), accept: [200, 404], what: `reading ${key}` }, async (res) => {
      if (res.statusCode === 404) return this.missing(res, key);
      return contentLength(res, key);
    });
  }

  /** A PUT or DELETE with `If-Match: "<tag>"`; the server decides atomically (412 when it differs). */
  async replaceIfMatch(key: string, tag: string, data: Uint8Array | null): Promise<boolean> {
    const what = `${data === null ? 'removing' : 'replacing'} ${key} if unchanged`;
    return this.transport.exchange(
      data === null
        ? { method: 'DELETE', path: objectPath(key), headers: { 'if-match': `"${tag}"` }, accept: [204, 412], what }
        : { method: 'PUT', path: objectPath(key), headers: { 'content-type': 'application/octet-stream', 'if-match': `"${tag}"` }, body: data, accept: [201, 412], what },
      async (res) => {
        if (res.statusCode === 201 || res.statusCode === 204) return true;
        const error = await errorFromResponse(res, this.location, what);
        if (error.code !== 'CHANGED') throw error;
        if (!res.retried) return false;
        // An earlier attempt may have done it and only its answer was lost.
        if (data === null) return (await this.size(key)) === undefined;
        try {
          return (await this.read(key)).equals(data);
        } catch (err) {
          if (isBlockrepError(err) && err.code === 'NOT_FOUND') return false;
          throw err;
        }
      },
    );
  }

  /** The server answers a lock's age (AGE_HEADER); other objects have none. */
  async objectAgeMs(key: string): Promise<number | undefined> {
    return this.transport.exchange({ method: 'HEAD', path: objectPath(key), accept: [200, 404], what: `reading ${key}` }, async (res) => {
      if (res.statusCode === 404) return this.missing(res, key);
      const header = res.headers[AGE_HEADER];
      if (typeof header !== 'string' || !/^\d{1,15}$/.test(header)) {
        throw new BlockrepError('IO', `${this.location} did not say how old ${key} is (a blockrep serve older than this client?)`);
      }
      return Number(header);
    });
  }

  async sizes(keys: string[], options: SizesOptions = {}): Promise<Array<number | undefined>> {
    const out = new Array<number | undefined>(keys.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const start = next;
        next = Math.min(keys.length, next + SIZES_BATCH);
        const batch = keys.slice(start, next);
        const sizes = await this.transport.exchange(
          {
            method: 'POST',
            path: SIZES_PATH,
            headers: { 'content-type': 'application/json' },
            body: Buffer.from(JSON.stringify(options.touch ? { keys: batch, touch: true } : { keys: batch })),
            accept: [200],
            what: `asking for the sizes of ${batch.length} objects`,
          },
          async (res) => sizesResponseSchema.safeParse(parseJson((await readAll(res, 64 + batch.length * 24, 'sizes')).toString('utf8'))),
        );
        if (!sizes.success || sizes.data.sizes.length !== batch.length) throw new BlockrepError('IO', `${this.location} answered a sizes request with something else`);
        sizes.data.sizes.forEach((s, i) => {
          out[start + i] = s ?? undefined;
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(SIZES_CONCURRENCY, Math.ceil(keys.length / SIZES_BATCH)) }, worker));
    return out;
  }

  async read(key: string, offset = 0, length?: number): Promise<Buffer> {
    if (length === 0) {
      if ((await this.size(key)) === undefined) throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`);
      return Buffer.alloc(0);
    }
    const ranged = offset !== 0 || length !== undefined;
    const headers: Record<string, string> = ranged ? { range: `bytes=${offset}-${length === undefined ? '' : offset + length - 1}` } : {};
    return this.transport.exchange({ method: 'GET', path: objectPath(key), headers, accept: [200, 206, 404, 416], what: `reading ${key}` }, async (res) => {
      if (res.statusCode === 404) {
        this.missing(res, key);
        throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`);
      }
      if (res.statusCode === 416) return Buffer.alloc(0); // from past the end: nothing, as a file read
      if (ranged && res.statusCode !== 206) throw new BlockrepError('IO', `${this.location} ignored the range of a read of ${key}`);
      if (ranged && !String(res.headers['content-range'] ?? '').startsWith(`bytes ${offset}-`)) {
        throw new BlockrepError('IO', `${this.location} answered a read of ${key} with another range`);
      }
      const expected = contentLength(res, key);
      if (expected > (length ?? MAX_WHOLE_READ_BYTES)) throw new BlockrepError('IO', `${this.location} sent ${expected} bytes for a read of ${key}`);
      const data = await readAll(res, expected, key);
      if (data.length !== expected) throw new BlockrepError('IO', `${this.location} sent ${data.length} of ${expected} bytes of ${key}`);
      return data;
    });
  }

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: WriteOptions = {}): Promise<number> {
    const body = data instanceof Uint8Array ? data : await spoolBody(data);
    try {
      const length = body instanceof Uint8Array ? body.byteLength : body.length;
      await this.transport.exchange(
        {
          method: 'PUT',
          path: objectPath(key),
          headers: { 'content-type': 'application/octet-stream', ...(options.exclusive ? { 'if-none-match': '*' } : {}) },
          body,
          accept: [201, 412],
          what: `writing ${key}`,
          headersTimeoutMs: 60_000 + Math.ceil(length / (1024 * 1024)) * HEADERS_MS_PER_MIB,
        },
        async (res) => {
          if (res.statusCode === 201) return;
          // An earlier attempt may have stored it and only its answer was lost: then it is ours.
          const error = await errorFromResponse(res, this.location, `writing ${key}`);
          if (res.retried && (await this.holds(key, body))) return;
          throw error;
        },
      );
      return length;
    } finally {
      if (!(body instanceof Uint8Array)) await body.dispose();
    }
  }

  async planChunkPatches(sliceBytes: number, items: Array<{ baseId: string; hashes: Buffer }>): Promise<Array<Buffer | undefined>> {
    const out: Array<Buffer | undefined> = [];
    for (let i = 0; i < items.length; i += MAX_PATCH_PLAN_ITEMS) {
      const part = items.slice(i, i + MAX_PATCH_PLAN_ITEMS);
      const body = Buffer.from(JSON.stringify({ sliceBytes, items: part.map((it) => ({ base: it.baseId, hashes: it.hashes.toString('base64') })) }));
      let answer;
      try {
        answer = await this.transport.exchange(
          { method: 'POST', path: PATCH_PLANS_PATH, headers: { 'content-type': 'application/json' }, body, accept: [200], what: 'planning chunk patches' },
          async (res) => patchPlanResponseSchema.parse(JSON.parse((await readAll(res, contentLength(res, 'a patch plan'), 'a patch plan')).toString('utf8'))),
        );
      } catch (err) {
        // A token without the read right may not plan (the server would tell it what it holds): every block goes whole.
        if (isBlockrepError(err) && err.code === 'FORBIDDEN') return items.map(() => undefined);
        throw err;
      }
      if (answer.items.length !== part.length) throw new BlockrepError('IO', `${this.location} answered a patch plan with ${answer.items.length} of ${part.length} items`);
      for (const item of answer.items) out.push(item === null ? undefined : Buffer.from(item, 'base64'));
    }
    return out;
  }

  async writeChunkPatch(chunkKey: string, patch: Uint8Array): Promise<number> {
    await this.transport.exchange(
      {
        method: 'PUT',
        path: objectPath(chunkKey),
        headers: { 'content-type': CHUNK_PATCH_TYPE },
        body: patch,
        accept: [201],
        what: `writing ${chunkKey} as a patch`,
        headersTimeoutMs: 60_000 + Math.ceil(patch.byteLength / (1024 * 1024)) * HEADERS_MS_PER_MIB,
      },
      async () => undefined,
    );
    return patch.byteLength;
  }

  /** Sends a manifest as a delta against its parent; the server composes and checks it. */
  async writeManifestDelta(key: string, delta: Uint8Array): Promise<number> {
    await this.transport.exchange(
      {
        method: 'PUT',
        path: objectPath(key),
        headers: { 'content-type': MANIFEST_DELTA_TYPE, 'if-none-match': '*' },
        body: delta,
        accept: [201, 412],
        what: `writing ${key}`,
        headersTimeoutMs: 60_000 + Math.ceil(delta.byteLength / (1024 * 1024)) * HEADERS_MS_PER_MIB,
      },
      async (res) => {
        if (res.statusCode === 201) return;
        const error = await errorFromResponse(res, this.location, `writing ${key}`);
        // A retry after a lost answer finds its own version there: that is success.
        if (res.retried && (await this.size(key)) !== undefined) return;
        throw error;
      },
    );
    return delta.byteLength;
  }

  async flush(): Promise<void> {
    await this.transport.exchange({ method: 'POST', path: FLUSH_PATH, accept: [204], what: 'flushing' }, async () => undefined);
  }

  async *list(prefix: string): AsyncIterable<BackendObject> {
    const res = await this.transport.open({ method: 'GET', path: listPath(prefix), accept: [200], what: `listing ${prefix || 'the repository'}` });
    try {
      let rest = '';
      let count = 0;
      let ended = false;
      for await (const piece of res.body) {
        rest += piece.toString('utf8');
        let nl: number;
        while ((nl = rest.indexOf('\n')) >= 0) {
          const line = rest.slice(0, nl);
          rest = rest.slice(nl + 1);
          const parsed = listLineSchema.safeParse(parseJson(line));
          if (!parsed.success || ended) throw new BlockrepError('IO', `${this.location} sent a listing line that is not one`);
          if ('end' in parsed.data) {
            if (parsed.data.count !== count) throw new BlockrepError('IO', `${this.location} sent a listing of ${count} objects that says ${parsed.data.count}`);
            ended = true;
          } else {
            count++;
            yield parsed.data;
          }
        }
        if (rest.length > MAX_LIST_LINE_BYTES) throw new BlockrepError('IO', `${this.location} sent a listing line longer than ${MAX_LIST_LINE_BYTES} bytes`);
      }
      if (!ended || rest !== '') throw new BlockrepError('UNAVAILABLE', `the listing of ${prefix || 'the repository'} from ${this.location} was cut short`);
    } catch (err) {
      if (isBlockrepError(err)) throw err;
      throw new BlockrepError('UNAVAILABLE', `the listing of ${prefix || 'the repository'} from ${this.location} broke off: ${(err as Error).message}`, { cause: err });
    } finally {
      // A consumer that stops early (or an error) must not leave the connection half-read.
      if (!res.body.readableEnded) res.body.destroy();
    }
  }

  async remove(key: string): Promise<void> {
    await this.transport.exchange({ method: 'DELETE', path: objectPath(key), accept: [204], what: `removing ${key}` }, async () => undefined);
  }

  async removeIfOlder(key: string, cutoffMs: number): Promise<ConditionalRemoval> {
    return this.transport.exchange(
      { method: 'DELETE', path: objectPath(key), headers: { [IF_OLDER_THAN_HEADER]: String(Math.floor(cutoffMs)) }, accept: [204], what: `removing ${key}` },
      async (res) => {
        const removal = removalSchema.safeParse(res.headers[REMOVAL_HEADER]);
        // A server that does not know the condition removed the chunk unconditionally: stop here.
        if (!removal.success) throw new BlockrepError('IO', `${this.location} does not support conditional removal (a blockrep serve older than this client?)`);
        return removal.data;
      },
    );
  }

  async removeStaleTemps(cutoffMs: number): Promise<TempSweep> {
    const body = Buffer.from(JSON.stringify({ olderThanMs: Math.max(0, Math.floor(cutoffMs)) }));
    return this.transport.exchange(
      { method: 'POST', path: SWEEP_TEMPS_PATH, headers: { 'content-type': 'application/json' }, body, accept: [200], what: 'removing stale temporary files' },
      async (res) => {
        const parsed = sweepTempsResponseSchema.safeParse(parseJson((await readAll(res, 4096, 'a temp sweep')).toString('utf8')));
        if (!parsed.success) throw new BlockrepError('IO', `${this.location} answered a temp sweep with something else`);
        return parsed.data;
      },
    );
  }

  async close(): Promise<void> {
    await this.transport.close();
  }

  /** A 404 from a blockrep server names its code; one from anything else is not "missing". */
  private missing(res: HttpResponse, key: string): undefined {
    if (res.headers[ERROR_CODE_HEADER] !== 'NOT_FOUND') {
      throw new BlockrepError('IO', `reading ${key}: ${this.location} answered 404 without a blockrep error code — is the URL that of a blockrep server?`);
    }
    return undefined;
  }

  /** Whether the server holds exactly `body` under `key`. */
  private async holds(key: string, body: Uint8Array | ReplayableBody): Promise<boolean> {
    const length = body instanceof Uint8Array ? body.byteLength : body.length;
    if ((await this.size(key)) !== length) return false;
    for (let pos = 0; pos < length; pos += COMPARE_BYTES) {
      const n = Math.min(COMPARE_BYTES, length - pos);
      const theirs = await this.read(key, pos, n);
      const ours = body instanceof Uint8Array ? Buffer.from(body.buffer, body.byteOffset + pos, n) : await body.read(pos, n);
      if (!theirs.equals(ours)) return false;
    }
    return true;
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function contentLength(res: HttpResponse, key: string): number {
  const header = res.headers['content-length'];
  if (typeof header !== 'string' || !/^\d{1,15}$/.test(header)) throw new BlockrepError('IO', `the answer for ${key} has no valid Content-Length`);
  return Number(header);
}

/** The whole body, refusing more than `maxBytes`. */
async function readAll(res: HttpResponse, maxBytes: number, what: string): Promise<Buffer> {
  const pieces: Buffer[] = [];
  let total = 0;
  for await (const piece of res.body) {
    total += piece.length;
    if (total > maxBytes) throw new BlockrepError('IO', `the answer for ${what} is longer than announced`);
    pieces.push(piece);
  }
  return Buffer.concat(pieces, total);
}
