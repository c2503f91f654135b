import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { BlockrepError } from '../../shared/index.js';
import { contentTag, type Backend, type BackendObject, type ConditionalRemoval, type SizesOptions, type TempSweep, type WriteOptions } from '../backend.js';
import { isMissingObject, isPreconditionFailed, s3Attempts, s3Code, s3Error, s3Status } from './s3-error.js';
import { formatS3Location, type S3Location } from './s3-location.js';

/** Uploads in flight that the sockets are sized for (the backup's remote write pool). */
export const S3_UPLOAD_CONCURRENCY = 16;
/** HEADs in flight for one sizes() call; with the uploads, what the keep-alive pool holds. */
const SIZES_CONCURRENCY = 8;
/** Keys per ListObjectsV2 page (S3's maximum). */
const LIST_PAGE_KEYS = 1000;
/**
 * The dedup question is answered from one listing of `chunks/` while the repository holds at
 * most this many chunks (~6 MB of memory; 25 GiB of 256 KiB blocks): then a chunk not listed
 * costs no request at all, and a first backup asks nothing per chunk however large the disk. A
 * larger repository gets a HEAD per chunk asked about (a nightly run asks only about its changed
 * blocks): a listing of millions of chunks would cost more requests and memory than it saves.
 */
const INDEX_MAX_CHUNKS = 100_000;
/** Index entries are the first 16 hex digits of a chunk id, as gc marks them (a collision only costs a request). */
const INDEX_PREFIX_HEX = 16;
/**
 * gc's HEAD (the age check) and its DELETE are at most this far apart, else the age is read
 * again: a touch that lands between them is lost. A backup re-reads every chunk it touched
 * TOUCH_RECHECK_MS after the touch, before it publishes (flush), and fails rather than publish a
 * version whose reused chunk such a gc removed. The difference covers the DELETE's trip.
 */
const GC_HEAD_TO_DELETE_MS = 1000;
const TOUCH_RECHECK_MS = 5000;
/** Touched keys kept for the recheck; at this many they are rechecked at once (memory). */
const MAX_PENDING_RECHECKS = 50_000;
/** A whole-object read larger than this is refused: memory is bounded. */
const MAX_WHOLE_READ_BYTES = 256 * 1024 * 1024;
/** A streamed write up to this size is held in memory; a larger one is spooled to a temp file. */
const SPOOL_IN_MEMORY_BYTES = 16 * 1024 * 1024;
/** S3's largest single PUT. */
const MAX_PUT_BYTES = 5 * 1024 ** 3;
/** Temporary objects (the conditional-write probe) are named like the local backend's temp files. */
const TEMP_PREFIX = '.tmp-';

export interface S3BackendOptions extends S3Location {
  /** Endpoint of a non-AWS server (path-style addressing is used for it); undefined: AWS. */
  endpoint?: string | undefined;
  /** Region; default: the AWS chain (AWS_REGION, the profile), and us-east-1 for a custom endpoint. */
  region?: string | undefined;
  /** Static credentials (tests); default: the AWS chain (environment, AWS_PROFILE, ~/.aws). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } | undefined;
  /** Tries per request, the first included (default 5, or AWS_MAX_ATTEMPTS). */
  maxAttempts?: number | undefined;
  /** Socket idle timeout of a request, ms (default 60 s); connecting gets 10 s. */
  requestTimeoutMs?: number | undefined;
}

/** What the probe found this server does with conditional requests. */
interface Conditionals {
  /** If-Match wants the ETag without its quotes (Ceph RGW 16 compares it bare). */
  bareEtag: boolean;
  /** DeleteObject honours If-Match (RGW 16 ignores it, and deletes). */
  conditionalDelete: boolean;
}

type Kind = 'PUT' | 'GET' | 'HEAD' | 'LIST' | 'COPY' | 'DELETE';

/**
 * A repository in an S3 bucket under a prefix (AWS, Ceph RGW, MinIO…), with the same keys as a
 * folder. A PUT is atomic and durable when answered, so flush() only waits for the touch
 * rechecks. Exclusive writes are `If-None-Match: *`, conditional replacements `If-Match` on the
 * ETag; both are probed once (probeConditionals) before the first one is relied on. Ages come
 * from the server's clock (LastModified against its Date header). Every request stays under the
 * prefix: the bucket may hold other data.
 */
export class S3Backend implements Backend {
  readonly location: string;
  readonly remote = true;
  private readonly client: S3Client;
  /** For streamed bodies, which the SDK cannot replay: retried here instead. */
  private readonly singleShot: S3Client;
  private readonly attempts: number;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly endpoint: string | undefined;
  private readonly counts: Record<Kind, number> = { PUT: 0, GET: 0, HEAD: 0, LIST: 0, COPY: 0, DELETE: 0 };
  private conditionals: Promise<Conditionals> | undefined;
  /** The ETag of what this process last wrote or read under a key, by content tag (locks). */
  private readonly etags = new Map<string, { tag: string; etag: string }>();
  private index: Promise<Map<string, number> | undefined> | undefined;
  private pendingRechecks: Array<{ key: string; at: number }> = [];
  /** The server's clock at the last answer with a Date header, and ours then. */
  private serverDate: { serverMs: number; localMs: number } | undefined;

  constructor(options: S3BackendOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix;
    this.endpoint = options.endpoint;
    this.location = formatS3Location(options);
    // The SDK warns once per process that it will need Node 22 from 2027: noise on a CLI's stderr.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const envAttempts = Number(process.env.AWS_MAX_ATTEMPTS);
    this.attempts = options.maxAttempts ?? (Number.isSafeInteger(envAttempts) && envAttempts >= 1 ? envAttempts : 5);
    const sockets = S3_UPLOAD_CONCURRENCY + SIZES_CONCURRENCY;
    const agent = { keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets };
    const config: S3ClientConfig = {
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint, forcePathStyle: true } : {}),
      ...(options.region !== undefined ? { region: options.region } : options.endpoint !== undefined && !process.env.AWS_REGION ? { region: 'us-east-1' } : {}),
      ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
      // Servers that predate the flexible checksums (Ceph RGW 16) refuse their headers.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: this.attempts,
      retryMode: 'standard',
      requestHandler: {
        connectionTimeout: 10_000,
        requestTimeout: options.requestTimeoutMs ?? 60_000,
        httpAgent: new HttpAgent(agent),
        httpsAgent: new HttpsAgent(agent),
      },
    };
    this.client = new S3Client(config);
    this.singleShot = new S3Client({ ...config, maxAttempts: 1 });
    for (const c of [this.client, this.singleShot]) {
      c.middlewareStack.add(
        (next) => async (args) => {
          const out = await next(args);
          const date = (out.response as { headers?: Record<string, string> } | undefined)?.headers?.date;
          const serverMs = date === undefined ? NaN : Date.parse(date);
          if (Number.isFinite(serverMs)) this.serverDate = { serverMs, localMs: Date.now() };
          return out;
        },
        { step: 'deserialize', name: 'blockrepServerDate' },
      );
    }
  }

  requestCounts(): Record<string, number> {
    return { ...this.counts };
  }

  // ---- reads

  async size(key: string): Promise<number | undefined> {
    return (await this.head(key))?.size;
  }

  async sizes(keys: string[], options: SizesOptions = {}): Promise<Array<number | undefined>> {
    const out = new Array<number | undefined>(keys.length);
    // Only the dedup question (touch) may be answered from the listing: "not listed" then just
    // means "send it again", which is harmless; a present chunk is confirmed by its touch.
    const index = options.touch && keys.length > 0 && keys.every((k) => k.startsWith('chunks/')) ? await this.chunkIndex() : undefined;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const i = next++;
        const key = keys[i]!;
        if (index !== undefined) {
          const listed = index.get(indexKey(key));
          out[i] = listed === undefined ? undefined : (await this.touch(key)) ? listed : undefined;
          continue;
        }
        const found = await this.head(key);
        out[i] = found === undefined ? undefined : options.touch && !(await this.touch(key)) ? undefined : found.size;
      }
    };
    await Promise.all(Array.from({ length: Math.min(SIZES_CONCURRENCY, keys.length) }, worker));
    return out;
  }

  async read(key: string, offset = 0, length?: number): Promise<Buffer> {
    if (length === 0) {
      if ((await this.head(key)) === undefined) throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`);
      return Buffer.alloc(0);
    }
    return (await this.get(key, offset, length)).data;
  }

  /** A GET (of a range, or whole) with the object's ETag. */
  private async get(key: string, offset = 0, length?: number): Promise<{ data: Buffer; etag: string | undefined }> {
    const ranged = offset !== 0 || length !== undefined;
    const range = ranged ? `bytes=${offset}-${length === undefined ? '' : offset + length - 1}` : undefined;
    let res;
    try {
      res = await this.send('GET', new GetObjectCommand({ Bucket: this.bucket, Key: this.k(key), ...(range ? { Range: range } : {}) }));
    } catch (err) {
      if (isMissingObject(err)) throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`, { cause: err });
      // From past the end: nothing, as a file read.
      if (s3Status(err) === 416 || s3Code(err) === 'InvalidRange') return { data: Buffer.alloc(0), etag: undefined };
      throw this.error(err, `reading ${key}`);
    }
    const expected = res.ContentLength;
    if (expected === undefined || expected > (length ?? MAX_WHOLE_READ_BYTES)) {
      await res.Body?.transformToWebStream().cancel().catch(() => undefined);
      throw new BlockrepError('IO', `${this.location} sent ${expected ?? 'an unknown number of'} bytes for a read of ${key}`);
    }
    let data: Buffer;
    try {
      data = Buffer.from((await res.Body?.transformToByteArray()) ?? new Uint8Array());
    } catch (err) {
      throw new BlockrepError('UNAVAILABLE', `reading ${key} from ${this.location} broke off: ${(err as Error).message}`, { cause: err });
    }
    if (data.length !== expected) throw new BlockrepError('IO', `${this.location} sent ${data.length} of ${expected} bytes of ${key}`);
    return { data, etag: res.ETag };
  }

  async objectAgeMs(key: string): Promise<number | undefined> {
    const found = await this.head(key);
    if (found === undefined) return undefined;
    // Both are whole seconds (HTTP dates): the age is good to about a second.
    return Math.max(0, found.serverNowMs - found.lastModifiedMs);
  }

  async *list(prefix: string): AsyncIterable<BackendObject> {
    yield* this.listRaw(this.prefix + prefix, false);
  }

  // ---- writes

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: WriteOptions = {}): Promise<number> {
    if (options.exclusive) await this.probeConditionals();
    if (data instanceof Uint8Array) {
      await this.put(key, data, options.exclusive ?? false);
      return data.byteLength;
    }
    const body = await spool(data);
    try {
      await this.putSpooled(key, body, options.exclusive ?? false);
      return body.length;
    } finally {
      await body.dispose();
    }
  }

  async replaceIfMatch(key: string, tag: string, data: Uint8Array | null): Promise<boolean> {
    const how = await this.probeConditionals();
    // The ETag of what this process last wrote saves a GET on every renewal.
    let etag = this.etags.get(key)?.tag === tag ? this.etags.get(key)!.etag : undefined;
    if (etag === undefined) {
      let current;
      try {
        current = await this.get(key);
      } catch (err) {
        if (err instanceof BlockrepError && err.code === 'NOT_FOUND') return false;
        throw err;
      }
      if (contentTag(current.data) !== tag) return false;
      etag = current.etag;
      if (etag === undefined) throw new BlockrepError('IO', `${this.location} gave no ETag for ${key}`);
    }
    const ifMatch = how.bareEtag ? etag.replace(/"/g, '') : etag;
    if (data === null && how.conditionalDelete) {
      try {
        await this.send('DELETE', new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key), IfMatch: ifMatch }));
      } catch (err) {
        if (isPreconditionFailed(err) || isMissingObject(err)) return false;
        throw this.error(err, `removing ${key} if unchanged`);
      }
      this.etags.delete(key);
      return true;
    }
    // Without a conditional DELETE (RGW 16): replace it, conditionally, with a tombstone nobody
    // may take over while it is fresh, then delete that. A contender meanwhile sees a young,
    // unreadable lock for the length of one request and is told to wait.
    const next = data ?? Buffer.from('{"released":true}\n');
    const body = Buffer.from(next.buffer, next.byteOffset, next.byteLength);
    let answer;
    try {
      answer = await this.send('PUT', new PutObjectCommand({ Bucket: this.bucket, Key: this.k(key), Body: body, ContentMD5: md5(body), IfMatch: ifMatch }));
    } catch (err) {
      if (!isPreconditionFailed(err) && !isMissingObject(err)) throw this.error(err, `replacing ${key} if unchanged`);
      // A retry after a lost answer finds its own write there: that is success.
      if (s3Attempts(err) <= 1 || (await this.head(key))?.etag !== `"${md5Hex(body)}"`) return false;
      answer = undefined;
    }
    this.remember(key, answer?.ETag ?? `"${md5Hex(body)}"`, body);
    if (data === null) {
      await this.remove(key);
      this.etags.delete(key);
    }
    return true;
  }

  async flush(): Promise<void> {
    await this.recheckTouched();
  }

  async remove(key: string): Promise<void> {
    try {
      await this.send('DELETE', new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key) }));
    } catch (err) {
      if (isMissingObject(err)) return;
      throw this.error(err, `removing ${key}`);
    }
    this.etags.delete(key);
  }

  /**
   * S3 cannot delete "only if older": the age is read (HEAD) and the DELETE follows within
   * GC_HEAD_TO_DELETE_MS, or the age is read again. A touch landing in between is lost to this
   * removal; the backup that made it finds that out in its recheck before it publishes
   * (recheckTouched) and fails instead of publishing a version that needs the chunk.
   */
  async removeIfOlder(key: string, cutoffMs: number): Promise<ConditionalRemoval> {
    for (;;) {
      // A HEAD (the cheap request) gives whole seconds: enough unless the cutoff falls within
      // that second, when a one-key listing tells the milliseconds.
      const head = await this.head(key);
      if (head === undefined) return 'missing';
      let found: { lastModifiedMs: number; answeredAt: number } | undefined = { lastModifiedMs: head.lastModifiedMs + 999, answeredAt: head.answeredAt };
      if (found.lastModifiedMs >= cutoffMs && head.lastModifiedMs < cutoffMs) found = await this.listedTime(key);
      if (found === undefined) return 'missing';
      if (found.lastModifiedMs >= cutoffMs) return 'young';
      if (Date.now() - found.answeredAt > GC_HEAD_TO_DELETE_MS) continue;
      await this.remove(key);
      return 'removed';
    }
  }

  /**
   * An object's LastModified from a one-key listing, which gives milliseconds where the server
   * keeps them (a HEAD gives whole seconds). A time on a whole second may be a rounded one: it is
   * taken as the end of that second, the safe side for gc.
   */
  private async listedTime(key: string): Promise<{ lastModifiedMs: number; answeredAt: number } | undefined> {
    for await (const o of this.listRaw(this.k(key), true, 1, 1)) {
      const answeredAt = Date.now();
      if (o.key !== key) return undefined;
      if (o.mtimeMs === undefined) throw new BlockrepError('IO', `${this.location} listed ${key} without its time`);
      return { lastModifiedMs: o.mtimeMs % 1000 === 0 ? o.mtimeMs + 999 : o.mtimeMs, answeredAt };
    }
    return undefined;
  }

  /** Probe objects a killed process left under the prefix (writes themselves leave nothing). */
  async removeStaleTemps(cutoffMs: number): Promise<TempSweep> {
    const sweep: TempSweep = { files: 0, bytes: 0 };
    for await (const o of this.listRaw(this.prefix + TEMP_PREFIX, true)) {
      if (o.mtimeMs === undefined || o.mtimeMs >= cutoffMs || o.key.includes('/')) continue;
      await this.remove(o.key);
      sweep.files++;
      sweep.bytes += o.size;
    }
    return sweep;
  }

  async close(): Promise<void> {
    this.client.destroy();
    this.singleShot.destroy();
  }

  // ---- internals

  private k(key: string): string {
    return this.prefix + key;
  }

  /** Every request goes through here: counted by kind, each retry included. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each caller names the output it reads
  private async send<T = any>(kind: Kind, command: object, single = false): Promise<T> {
    try {
      const out = (await (single ? this.singleShot : this.client).send(command as never)) as T;
      this.counts[kind] += s3Attempts(out);
      return out;
    } catch (err) {
      this.counts[kind] += s3Attempts(err);
      throw err;
    }
  }

  private error(err: unknown, what: string): BlockrepError {
    return s3Error(err, what, { location: this.location, bucket: this.bucket, endpoint: this.endpoint });
  }

  /** Only locks are replaced conditionally: their ETags are worth keeping. */
  private remember(key: string, etag: string | undefined, data: Uint8Array): void {
    if (etag === undefined || etag === '' || !key.startsWith('locks/')) return;
    this.etags.set(key, { tag: contentTag(data), etag });
  }

  private async head(key: string): Promise<{ size: number; etag: string | undefined; lastModifiedMs: number; serverNowMs: number; answeredAt: number } | undefined> {
    try {
      const res = await this.send<{ ContentLength?: number; ETag?: string; LastModified?: Date }>('HEAD', new HeadObjectCommand({ Bucket: this.bucket, Key: this.k(key) }));
      const answeredAt = Date.now();
      if (res.ContentLength === undefined || res.LastModified === undefined) throw new BlockrepError('IO', `${this.location} answered a HEAD of ${key} without its size or time`);
      const serverNowMs = this.serverDate ? this.serverDate.serverMs + (answeredAt - this.serverDate.localMs) : answeredAt;
      return { size: res.ContentLength, etag: res.ETag, lastModifiedMs: res.LastModified.getTime(), serverNowMs, answeredAt };
    } catch (err) {
      if (isMissingObject(err)) return undefined;
      throw this.error(err, `reading ${key}`);
    }
  }

  /**
   * Refreshes LastModified (CopyObject onto itself, metadata replaced): gc keeps what a
   * backup is about to refer to. False when the object is gone.
   */
  private async touch(key: string): Promise<boolean> {
    try {
      await this.send('COPY', new CopyObjectCommand({ Bucket: this.bucket, Key: this.k(key), CopySource: `${this.bucket}/${this.k(key).split('/').map(encodeURIComponent).join('/')}`, MetadataDirective: 'REPLACE' }));
    } catch (err) {
      if (isMissingObject(err)) return false;
      throw this.error(err, `touching ${key}`);
    }
    this.pendingRechecks.push({ key, at: Date.now() });
    if (this.pendingRechecks.length >= MAX_PENDING_RECHECKS) await this.recheckTouched();
    return true;
  }

  /**
   * Every object touched is read again once TOUCH_RECHECK_MS have passed since its touch: a gc
   * that judged it old just before the touch has deleted it by then, and this run must not
   * publish a version that refers to it.
   */
  private async recheckTouched(): Promise<void> {
    const pending = this.pendingRechecks;
    this.pendingRechecks = [];
    if (pending.length === 0) return;
    const wait = pending[pending.length - 1]!.at + TOUCH_RECHECK_MS - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    let next = 0;
    const lost: string[] = [];
    const worker = async (): Promise<void> => {
      while (next < pending.length) {
        const { key } = pending[next++]!;
        if ((await this.head(key)) === undefined) lost.push(key);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SIZES_CONCURRENCY, pending.length) }, worker));
    if (lost.length > 0) {
      this.index = undefined;
      throw new BlockrepError(
        'CHUNK_MISSING',
        `a garbage collection running at the same time removed ${lost.length} chunk(s) this backup reuses (${lost[0]}${lost.length > 1 ? ', …' : ''}) from ${this.location}; nothing was published — run the backup again, it stores them anew`,
      );
    }
  }

  /** The chunk index for the dedup question, or undefined when the repository is too large for it. */
  private chunkIndex(): Promise<Map<string, number> | undefined> {
    this.index ??= (async () => {
      // One page of one of the 256 folders tells whether the whole listing fits the budget.
      let sample = 0;
      for await (const _ of this.listRaw(`${this.prefix}chunks/00/`, true, 1)) sample++;
      if (sample >= LIST_PAGE_KEYS || sample * 256 > INDEX_MAX_CHUNKS) return undefined;
      const index = new Map<string, number>();
      for await (const o of this.listRaw(`${this.prefix}chunks/`, true)) {
        index.set(indexKey(o.key), o.size);
        if (index.size > INDEX_MAX_CHUNKS) return undefined;
      }
      return index;
    })();
    return this.index;
  }

  /**
   * Objects under a full key prefix, page by page (memory: one page). Keys are given relative to
   * the repository's prefix; temp objects are left out unless `temps`.
   */
  private async *listRaw(fullPrefix: string, temps: boolean, maxPages = Infinity, pageKeys = LIST_PAGE_KEYS): AsyncIterable<BackendObject> {
    let token: string | undefined;
    for (let page = 0; page < maxPages; page++) {
      let res;
      try {
        res = await this.send<{ Contents?: Array<{ Key?: string; Size?: number; LastModified?: Date }>; IsTruncated?: boolean; NextContinuationToken?: string }>('LIST', new ListObjectsV2Command({ Bucket: this.bucket, Prefix: fullPrefix, MaxKeys: pageKeys, ...(token ? { ContinuationToken: token } : {}) }),
        );
      } catch (err) {
        throw this.error(err, `listing ${fullPrefix || 'the bucket'}`);
      }
      for (const o of res.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        const key = o.Key.slice(this.prefix.length);
        if (!temps && key.split('/').some((s) => s.startsWith(TEMP_PREFIX))) continue;
        yield { key, size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() };
      }
      if (!res.IsTruncated || !res.NextContinuationToken) return;
      token = res.NextContinuationToken;
    }
  }

  private async put(key: string, body: Uint8Array, exclusive: boolean): Promise<void> {
    if (body.byteLength > MAX_PUT_BYTES) throw new BlockrepError('TOO_LARGE', `${key} is ${body.byteLength} bytes, more than one S3 PUT takes (5 GiB)`);
    const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    const hex = md5Hex(buf);
    let etag: string | undefined;
    try {
      const res = await this.send<{ ETag?: string }>('PUT', new PutObjectCommand({ Bucket: this.bucket, Key: this.k(key), Body: buf, ContentMD5: Buffer.from(hex, 'hex').toString('base64'), ...(exclusive ? { IfNoneMatch: '*' } : {}) }),
      );
      etag = res.ETag;
    } catch (err) {
      if (exclusive && isPreconditionFailed(err)) {
        // An earlier attempt may have stored it and only its answer was lost: then it is ours.
        if (s3Attempts(err) > 1 && (await this.head(key))?.etag === `"${hex}"`) {
          etag = `"${hex}"`;
        } else {
          throw new BlockrepError('EXISTS', `${key} already exists in ${this.location}`, { cause: err });
        }
      } else {
        throw this.error(err, `writing ${key}`);
      }
    }
    this.remember(key, etag ?? `"${hex}"`, buf);
    // What this run wrote is known too (a block repeated later in the run), up to a bound: past
    // it, a repeat is sent again rather than the memory grown.
    if (key.startsWith('chunks/')) void this.index?.then((index) => index && index.size < 2 * INDEX_MAX_CHUNKS && index.set(indexKey(key), buf.byteLength));
  }

  /** A spooled body is sent with a fresh stream per try (the SDK cannot replay a stream). */
  private async putSpooled(key: string, body: Spooled, exclusive: boolean): Promise<void> {
    if (body.data) return this.put(key, body.data, exclusive);
    if (body.length > MAX_PUT_BYTES) throw new BlockrepError('TOO_LARGE', `${key} is ${body.length} bytes, more than one S3 PUT takes (5 GiB)`);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.send('PUT', new PutObjectCommand({
            Bucket: this.bucket,
            Key: this.k(key),
            Body: createReadStream(body.path!),
            ContentLength: body.length,
            ContentMD5: Buffer.from(body.md5, 'hex').toString('base64'),
            ...(exclusive ? { IfNoneMatch: '*' } : {}),
          }),
          true,
        );
        return;
      } catch (err) {
        if (exclusive && isPreconditionFailed(err)) {
          if (attempt > 1 && (await this.head(key))?.etag === `"${body.md5}"`) return;
          throw new BlockrepError('EXISTS', `${key} already exists in ${this.location}`, { cause: err });
        }
        const e = this.error(err, `writing ${key}`);
        if (e.code !== 'UNAVAILABLE' || attempt >= this.attempts) throw e;
        await new Promise((r) => setTimeout(r, Math.min(8000, 250 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2)));
      }
    }
  }

  /**
   * Once per process, before the first exclusive write or conditional replacement: a probe
   * object under the prefix is created with If-None-Match: *, created again (must be refused),
   * replaced with a wrong If-Match (must be refused) and with its own ETag (must work, quoted
   * or bare), and deleted with a wrong If-Match (honoured or not). A server that ignores the
   * conditions would let two backups publish the same version or steal a lock: refused.
   */
  private probeConditionals(): Promise<Conditionals> {
    this.conditionals ??= (async () => {
      const key = `${TEMP_PREFIX}probe-${randomBytes(8).toString('hex')}`;
      const body = Buffer.from('blockrep conditional-write probe\n');
      const unsupported = (feature: string): BlockrepError =>
        new BlockrepError(
          'UNSUPPORTED_STORAGE',
          `${this.endpoint ?? 'this S3 service'} does not honour ${feature}, which blockrep needs to publish versions and hold disk locks safely in ${this.location}; use a server that supports conditional writes (AWS S3, Ceph RGW 16+, MinIO)`,
        );
      const attempt = async (what: string, input: { IfNoneMatch?: string; IfMatch?: string }): Promise<string> => {
        try {
          const res = await this.send<{ ETag?: string }>('PUT', new PutObjectCommand({ Bucket: this.bucket, Key: this.k(key), Body: body, ...input }));
          return res.ETag ?? '';
        } catch (err) {
          if (isPreconditionFailed(err)) return 'refused';
          if (s3Status(err) === 501 || s3Code(err) === 'NotImplemented') return 'unsupported';
          throw this.error(err, what);
        }
      };
      try {
        const etag = await attempt('probing conditional writes', { IfNoneMatch: '*' });
        if (etag === 'refused') throw new BlockrepError('IO', `the probe object ${key} already existed in ${this.location}`);
        if (etag === 'unsupported') throw unsupported('If-None-Match on PUT');
        if ((await attempt('probing conditional writes', { IfNoneMatch: '*' })) !== 'refused') throw unsupported('If-None-Match: * on PUT (conditional create)');
        if ((await attempt('probing conditional writes', { IfMatch: '"00000000000000000000000000000000"' })) !== 'refused') throw unsupported('If-Match on PUT (conditional replace)');
        let bareEtag = false;
        if ((await attempt('probing conditional writes', { IfMatch: etag })) === 'refused') {
          bareEtag = true;
          if ((await attempt('probing conditional writes', { IfMatch: etag.replace(/"/g, '') })) === 'refused') throw unsupported('If-Match with the current ETag on PUT');
        }
        let conditionalDelete = false;
        try {
          await this.send('DELETE', new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key), IfMatch: '"00000000000000000000000000000000"' }));
        } catch (err) {
          if (!isPreconditionFailed(err)) throw this.error(err, 'probing conditional deletes');
          conditionalDelete = true;
        }
        return { bareEtag, conditionalDelete };
      } finally {
        await this.remove(key).catch(() => undefined);
      }
    })();
    // A verdict is kept; a probe that failed on the way (the network) is tried again next time.
    this.conditionals.catch((err: unknown) => {
      if (!(err instanceof BlockrepError && err.code === 'UNSUPPORTED_STORAGE')) this.conditionals = undefined;
    });
    return this.conditionals;
  }
}

function indexKey(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1, key.lastIndexOf('/') + 1 + INDEX_PREFIX_HEX);
}

function md5Hex(data: Uint8Array): string {
  return createHash('md5').update(data).digest('hex');
}

function md5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}

interface Spooled {
  length: number;
  md5: string;
  /** Held in memory (small bodies)… */
  data?: Buffer;
  /** …or in a temporary file. */
  path?: string;
  dispose(): Promise<void>;
}

/** A streamed body made replayable: in memory up to SPOOL_IN_MEMORY_BYTES, else in a temp file. */
async function spool(data: AsyncIterable<Uint8Array>): Promise<Spooled> {
  const hash = createHash('md5');
  const pieces: Buffer[] = [];
  let length = 0;
  let dir: string | undefined;
  let fh: import('node:fs/promises').FileHandle | undefined;
  try {
    for await (const piece of data) {
      hash.update(piece);
      length += piece.byteLength;
      if (fh === undefined && length <= SPOOL_IN_MEMORY_BYTES) {
        pieces.push(Buffer.from(piece));
        continue;
      }
      if (fh === undefined) {
        dir = await mkdtemp(join(tmpdir(), 'blockrep-s3-'));
        fh = await open(join(dir, 'body'), 'w', 0o600);
        for (const p of pieces.splice(0)) await fh.write(p);
      }
      await fh.write(piece);
    }
  } catch (err) {
    await fh?.close().catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
    throw err;
  }
  if (fh === undefined) {
    return { length, md5: hash.digest('hex'), data: Buffer.concat(pieces, length), dispose: async () => undefined };
  }
  await fh.close();
  const d = dir!;
  return { length, md5: hash.digest('hex'), path: join(d, 'body'), dispose: () => rm(d, { recursive: true, force: true }) };
}
