import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { MANIFEST_ENVELOPE_HEADER_BYTES, manifestEnvelopeProblem } from '../crypto/index.js';
import { dirname, join } from 'node:path';
import { LocalBackend, type Backend } from '../backend/index.js';
import { decodeHeader, FIXED_HEADER_BYTES, manifestBytes, peekHeaderBytes, composeManifest, decodeDelta, deltaChunkIds, type DecodedDelta, idHex, isZeroId, ManifestReader } from '../manifest/index.js';
import { Repository } from '../repository/index.js';
import { MANIFEST_DELTA_TYPE, MAX_MANIFEST_DELTA_BYTES } from '../protocol/index.js';
import { BlockrepError, isBlockrepError, wrapSystemError } from '../shared/index.js';
import { checkDeclaredLength, readBody, requestPieces, tooLarge } from './http-io.js';
import type { RequestContext } from './request-context.js';

/** Everything before the entries: the fixed header, at most 64 KiB of meta, padding. */
const MAX_HEADER_BYTES = FIXED_HEADER_BYTES + 64 * 1024 + 8;
/** Chunk ids asked about per hasChunks call. */
const CHECK_BATCH = 4096;
/** Chunk ids remembered as present while checking one manifest (many blocks share chunks). */
const MAX_REMEMBERED = 256 * 1024;
/** A sealed manifest (encrypted repository), whose header the server cannot read: 16 GiB (400 million blocks). */
const MAX_SEALED_MANIFEST_BYTES = 16 * 1024 ** 3;

/**
 * PUT of a manifest, the commit of a version. The body is spooled to a temporary file (never
 * held whole in memory; its length is bounded by its own header as soon as that arrives), then
 * checked like any stored manifest (ManifestReader: header, length, digest), matched against the
 * key (disk id and version id), and every chunk it refers to must be present; the backend is
 * flushed so those chunks are durable, and only then is the manifest stored, exclusively: a
 * version is immutable, and a commit that loses a race fails with EXISTS. Returns bytes stored.
 */
export async function receiveManifest(
  repo: Repository,
  store: Backend,
  spoolDir: string,
  ref: { key: string; diskId: string; versionId: string },
  ctx: RequestContext,
): Promise<number> {
  const where = `manifest ${ref.key}`;
  const declared = checkDeclaredLength(ctx, Number.MAX_SAFE_INTEGER, where);
  // The spool is a little repository of its own, so the manifest is checked under its own key
  // by the same reader that checks stored manifests.
  const spoolRoot = join(spoolDir, randomBytes(12).toString('hex'));
  const spoolPath = join(spoolRoot, ...ref.key.split('/'));
  try {
    if (repo.encrypted) return await receiveSealedManifest(store, spoolPath, ref, ctx, declared, where);
    let delta: DecodedDelta | undefined;
    if (ctx.req.headers['content-type'] === MANIFEST_DELTA_TYPE) {
      delta = await composeFromDelta(store, ref, ctx, spoolRoot, where);
    } else {
      await spool(ctx, spoolPath, declared, where);
    }
    const reader = await ManifestReader.open(new LocalBackend(spoolRoot), ref.key);
    const meta = reader.header.meta;
    if (meta.diskId !== ref.diskId || meta.versionId !== ref.versionId) {
      throw new BlockrepError('BAD_REQUEST', `${where}: the manifest is of disk ${meta.diskId} version ${meta.versionId}, not the one its key names`);
    }
    // A delta's other entries are its parent's, whose chunks the published parent refers to
    // (and prune takes the disk lock, so the parent cannot lose them during a backup): only
    // the delta's own chunks need checking, so a nightly commit costs what changed.
    await checkChunksPresent(repo, delta ? deltaEntryBatches(delta) : reader.batches(), where);
    await repo.flush(); // the chunks it refers to are durable before it is
    try {
      return await store.write(ref.key, createReadStream(spoolPath), { exclusive: true });
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'EXISTS') throw new BlockrepError('EXISTS', `version ${ref.versionId} of disk ${ref.diskId} already exists`);
      throw err;
    }
  } finally {
    await rm(spoolRoot, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * A sealed manifest (crypto/manifest-pages.ts): the server holds no key, so it checks the
 * envelope's form and that its length is a whole number of pages; which chunks it names, and
 * whether it belongs to this disk and version, only a client with the key can check (the key is
 * part of every page's associated data, so a mislabelled one never opens). The client flushed
 * its chunks before sending it. Stored exclusively, like any version.
 */
async function receiveSealedManifest(store: Backend, spoolPath: string, ref: { key: string; diskId: string; versionId: string }, ctx: RequestContext, declared: number | undefined, where: string): Promise<number> {
  if (ctx.req.headers['content-type'] === MANIFEST_DELTA_TYPE) throw new BlockrepError('BAD_REQUEST', `${where}: the repository is encrypted; send the whole sealed manifest, not a delta`);
  if (declared !== undefined && declared > MAX_SEALED_MANIFEST_BYTES) throw tooLarge(where, MAX_SEALED_MANIFEST_BYTES);
  await spoolRaw(ctx, spoolPath, declared ?? MAX_SEALED_MANIFEST_BYTES, where);
  const size = (await stat(spoolPath)).size;
  const fh = await open(spoolPath, 'r');
  const head = Buffer.alloc(MANIFEST_ENVELOPE_HEADER_BYTES);
  try {
    await fh.read(head, 0, head.length, 0);
  } finally {
    await fh.close();
  }
  const problem = manifestEnvelopeProblem(head, size);
  if (problem !== undefined) throw new BlockrepError('REPO_CORRUPT', `${where}: ${problem}`);
  try {
    return await store.write(ref.key, createReadStream(spoolPath), { exclusive: true });
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'EXISTS') throw new BlockrepError('EXISTS', `version ${ref.versionId} of disk ${ref.diskId} already exists`);
    throw err;
  }
}

/** A new spool file of the server's own, readable by it only. */
async function createSpoolFile(path: string): Promise<FileHandle> {
  try {
    await mkdir(dirname(path), { recursive: true });
    return await open(path, 'wx', 0o600);
  } catch (err) {
    throw wrapSystemError(err, 'creating an upload spool file');
  }
}

/** Writes the body to `path`, refusing it past `limit` bytes (or short of what was declared). */
async function spoolRaw(ctx: RequestContext, path: string, limit: number, where: string): Promise<void> {
  const fh = await createSpoolFile(path);
  try {
    let written = 0;
    for await (const piece of requestPieces(ctx)) {
      ctx.bytesIn += piece.length;
      if (ctx.bytesIn > limit) throw tooLarge(where, limit);
      await fh.write(piece, 0, piece.length, written);
      written += piece.length;
    }
  } finally {
    await fh.close();
  }
}

/**
 * A delta (manifest-delta.ts) against the parent version its header names, of the same disk:
 * composed here from the parent this repository holds into the spool, where it is then checked
 * like a manifest sent whole. The composition must match the digest the client computed.
 */
async function composeFromDelta(store: Backend, ref: { key: string; diskId: string }, ctx: RequestContext, spoolRoot: string, where: string): Promise<DecodedDelta> {
  checkDeclaredLength(ctx, MAX_MANIFEST_DELTA_BYTES, where);
  const body = await readBody(ctx, MAX_MANIFEST_DELTA_BYTES, where);
  const delta = decodeDelta(body, where);
  const parentId = delta.header.meta.parentVersionId;
  if (parentId === null) throw new BlockrepError('BAD_REQUEST', `${where}: a delta needs a parent version; send the whole manifest`);
  if (delta.header.meta.diskId !== ref.diskId) throw new BlockrepError('BAD_REQUEST', `${where}: the delta is of disk ${delta.header.meta.diskId}`);
  let parent: ManifestReader;
  try {
    parent = await ManifestReader.open(store, Repository.manifestKey(ref.diskId, parentId));
  } catch (err) {
    if (isBlockrepError(err) && (err.code === 'VERSION_NOT_FOUND' || err.code === 'INVALID_VERSION_ID')) {
      throw new BlockrepError('BAD_REQUEST', `${where}: its parent version ${parentId} does not exist here; send the whole manifest`);
    }
    throw err;
  }
  await new LocalBackend(spoolRoot).write(ref.key, composeManifest(delta, parent, where));
  return delta;
}

/** Writes the body to `path`, refusing it as soon as it runs past what its header allows. */
async function spool(ctx: RequestContext, path: string, declared: number | undefined, where: string): Promise<void> {
  const fh = await createSpoolFile(path);
  try {
    let expected: number | undefined;
    let head = Buffer.alloc(0);
    let written = 0;
    for await (const piece of requestPieces(ctx)) {
      ctx.bytesIn += piece.length;
      if (expected === undefined) {
        head = Buffer.concat([head, piece.subarray(0, MAX_HEADER_BYTES - head.length)]);
        expected = expectedLength(head, where);
        if (expected !== undefined) {
          if (declared !== undefined && declared !== expected) {
            throw new BlockrepError('REPO_CORRUPT', `${where}: ${declared} bytes sent, its header describes ${expected}`);
          }
          head = Buffer.alloc(0);
        }
      }
      const limit = expected ?? MAX_HEADER_BYTES;
      if (ctx.bytesIn > limit) throw tooLarge(where, limit);
      await fh.write(piece, 0, piece.length, written);
      written += piece.length;
    }
    if (expected === undefined || written !== expected) {
      throw new BlockrepError('REPO_CORRUPT', `${where}: truncated (${written} bytes${expected === undefined ? '' : ` of ${expected}`})`);
    }
  } finally {
    await fh.close();
  }
}

/** The manifest's full length, once enough of its start has arrived to know it. */
function expectedLength(head: Buffer, where: string): number | undefined {
  if (head.length < 12) return undefined;
  const headerBytes = peekHeaderBytes(head, where);
  if (head.length < headerBytes) return undefined;
  return manifestBytes(decodeHeader(head, where));
}

/** The chunk ids of the entries a delta carries, as ManifestReader.batches() gives them. */
async function* deltaEntryBatches(delta: DecodedDelta): AsyncIterable<{ ids: Buffer }> {
  yield { ids: deltaChunkIds(delta) };
}

/** Every non-zero chunk id of `batches` must be in the repository (CHUNK_MISSING otherwise). */
async function checkChunksPresent(repo: Repository, batches: AsyncIterable<{ ids: Buffer }>, where: string): Promise<void> {
  const known = new Set<string>();
  let pending = new Set<string>();
  const check = async (): Promise<void> => {
    const batch = [...pending];
    pending = new Set();
    // Only a check: the client touched what it found present when it asked, under its disk lock
    // (which holds gc's cutoff back), so touching every chunk of a whole manifest again is waste.
    const present = await repo.hasChunks(batch, { touch: false });
    const missing = batch.findIndex((_, i) => !present[i]);
    if (missing >= 0) {
      throw new BlockrepError('CHUNK_MISSING', `${where} refers to chunk ${batch[missing]}, which the repository does not have: upload it first`, {
        details: { chunk: batch[missing] },
      });
    }
    if (known.size + batch.length > MAX_REMEMBERED) known.clear();
    for (const id of batch) known.add(id);
  };
  for await (const entries of batches) {
    for (let i = 0; i < entries.ids.length / 32; i++) {
      if (isZeroId(entries.ids, i)) continue;
      const id = idHex(entries.ids, i);
      if (known.has(id)) continue;
      pending.add(id);
      if (pending.size >= CHECK_BATCH) await check();
    }
  }
  if (pending.size > 0) await check();
}

