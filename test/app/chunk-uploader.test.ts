import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkUploader, type UploadTotals } from '../../src/app/chunk-uploader.js';
import type { Backend } from '../../src/backend/backend.js';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { decodeChunk, encodeChunk, type EncodedChunk } from '../../src/chunk/chunk-codec.js';
import { Repository } from '../../src/repository/repository.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';
import { TaskPool } from '../../src/shared/task-pool.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The uploader against a real `blockrep serve`: the backend under the repository is the real
 * HttpBackend, wrapped only to record when each call starts and ends (and, in one test, to hold
 * the uploads back), so the order of the requests can be checked.
 */
let server: RunningTestServer;
const BLOCK = 8192;
const SLICE = 1024;
const POOL = 8;

beforeAll(async () => {
  server = await startServer({ root: join(await tempDir(), 'repo') });
});

afterAll(async () => {
  await server.stop();
});

type Call = { op: string; phase: 'start' | 'end'; keys: string[] };

/** The real backend, with every call of `ops` recorded in order; `gate` can hold chunk writes. */
function recorded(backend: HttpBackend, gate?: () => Promise<void>): { backend: Backend; calls: Call[] } {
  const calls: Call[] = [];
  const ops = new Set(['sizes', 'write', 'writeChunkPatch', 'planChunkPatches']);
  const proxy = new Proxy(backend, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof prop !== 'string' || !ops.has(prop) || typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        const keys = prop === 'sizes' ? (args[0] as string[]) : prop === 'planChunkPatches' ? [] : [String(args[0])];
        if (gate && (prop === 'write' || prop === 'writeChunkPatch')) await gate();
        calls.push({ op: prop, phase: 'start', keys });
        try {
          return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } finally {
          calls.push({ op: prop, phase: 'end', keys });
        }
      };
    },
  });
  return { backend: proxy, calls };
}

const totals = (): UploadTotals => ({ bytesSent: 0, storedBytes: 0, newChunks: 0, reusedChunks: 0, patchedChunks: 0 });
const isUpload = (c: Call) => c.op === 'write' || c.op === 'writeChunkPatch';

/** `n` blocks, each with a base already stored and a new content that differs in one slice. */
async function blocksWithBases(repo: Repository, n: number): Promise<Array<{ chunk: EncodedChunk; baseId: string }>> {
  const out: Array<{ chunk: EncodedChunk; baseId: string }> = [];
  for (let i = 0; i < n; i++) {
    const base = randomBytes(BLOCK);
    const b = encodeChunk(base);
    await repo.putChunk(b);
    const raw = Buffer.from(base);
    randomBytes(100).copy(raw, (i % (BLOCK / SLICE)) * SLICE);
    out.push({ chunk: encodeChunk(raw), baseId: b.id });
  }
  return out;
}

describe('ChunkUploader', () => {
  it('asks about the next batches while the earlier ones upload, keeps the pool full, and counts every chunk once', async () => {
    const http = new HttpBackend({ url: server.url });
    const { backend, calls } = recorded(http);
    const repo = await Repository.open(backend);
    const blocks = await blocksWithBases(repo, 150);
    const whole = Array.from({ length: 20 }, () => encodeChunk(randomBytes(BLOCK))); // no base: sent whole
    const already = encodeChunk(randomBytes(BLOCK));
    await repo.putChunk(already);
    calls.length = 0;
    // The uploader frees each blob once it is stored: what each must hold, kept aside.
    const contents = new Map([...blocks.map((b) => b.chunk), ...whole].map((c) => [c.id, Buffer.from(decodeChunk(c.blob, c.id))]));

    const t = totals();
    const pool = new TaskPool(POOL);
    const uploader = new ChunkUploader(repo, pool, t, SLICE);
    for (const b of blocks) await uploader.add(b.chunk, b.baseId);
    await uploader.add(blocks[0]!.chunk, blocks[0]!.baseId); // the same content again: once
    for (const c of whole) await uploader.add(c, undefined);
    await uploader.add(already, undefined);
    await uploader.finish();

    expect(t).toMatchObject({ newChunks: 170, patchedChunks: 150, reusedChunks: 1 });
    // Every chunk is there, and each patched one was rebuilt into exactly the new block.
    for (const c of [...blocks.map((b) => b.chunk), ...whole]) {
      expect((await repo.getChunk(c.id)).equals(contents.get(c.id)!)).toBe(true);
      expect(c.blob.byteLength).toBe(0); // freed (releaseBuffer) once stored
    }
    expect(already.blob.byteLength).toBe(0); // and once found stored

    // The questions about the second batch went out before the first batch's uploads had all
    // started (one batch at a time would ask only after handing out all of them).
    const sizes = calls.filter((c) => c.op === 'sizes' && c.phase === 'start');
    expect(sizes.length).toBeGreaterThanOrEqual(3);
    const firstBatch = new Set(sizes[0]!.keys);
    const secondAsked = calls.indexOf(sizes[1]!);
    const lastFirstUpload = calls.findLastIndex((c) => isUpload(c) && c.phase === 'start' && firstBatch.has(c.keys[0]!));
    expect(secondAsked).toBeLessThan(lastFirstUpload);
    // The pool was full: POOL uploads in flight at once.
    let open = 0;
    let most = 0;
    for (const c of calls.filter(isUpload)) {
      open += c.phase === 'start' ? 1 : -1;
      most = Math.max(most, open);
    }
    expect(most).toBe(POOL);
    await http.close();
  });

  it('holds at most a few batches while uploads are stuck, and loses nothing once they move', async () => {
    const http = new HttpBackend({ url: server.url });
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { backend } = recorded(http, () => held);
    const repo = await Repository.open(backend);
    const chunks = Array.from({ length: 400 }, () => encodeChunk(randomBytes(1024)));
    const t = totals();
    const pool = new TaskPool(POOL);
    const uploader = new ChunkUploader(repo, pool, t, SLICE);
    let accepted = 0;
    const feeding = (async () => {
      for (const c of chunks) {
        await uploader.add(c, undefined);
        accepted++;
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    // Bounded: the scan is stopped after a few batches of 64 (plus the pool), not after all 400.
    expect(accepted).toBeGreaterThan(0);
    expect(accepted).toBeLessThanOrEqual(8 + 4 * 64);
    release();
    await feeding;
    await uploader.finish();
    expect(t.newChunks).toBe(400);
    await http.close();
  });

  it('a failed upload fails finish() and every later add() with its code, after nothing is left running', async () => {
    const http = new HttpBackend({ url: server.url });
    const repo = await Repository.open(http);
    const good = Array.from({ length: 30 }, () => encodeChunk(randomBytes(1024)));
    const liar = encodeChunk(randomBytes(1024));
    const bad: EncodedChunk = { ...liar, id: encodeChunk(randomBytes(1024)).id }; // content does not hash to its id
    const pool = new TaskPool(POOL);
    const uploader = new ChunkUploader(repo, pool, totals(), SLICE);
    for (const c of good.slice(0, 10)) await uploader.add(c, undefined);
    await uploader.add(bad, undefined);
    for (const c of good.slice(10)) await uploader.add(c, undefined);
    const failure = await uploader.finish().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isBlockrepError(failure) && failure.code).toBe('CHUNK_CORRUPT');
    await expect(uploader.add(encodeChunk(randomBytes(64)), undefined)).rejects.toMatchObject({ code: 'CHUNK_CORRUPT' });
    await uploader.settle();
    expect(await repo.hasChunks([bad.id])).toEqual([false]);
    await http.close();
  });
});
