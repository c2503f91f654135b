import { z } from 'zod';
import { MAX_LEASE_MS } from '../repository/index.js';
import type { Backend } from '../backend/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { readBody } from './http-io.js';
import type { RequestContext } from './request-context.js';

const MAX_LOCK_BYTES = 4096;

/** What DiskLock writes (repository/disk-lock.ts), with bounds: nothing else is stored. */
export const lockBodySchema = z
  .object({
    pid: z.number().int().nonnegative(),
    host: z.string().max(256),
    createdAt: z.string().max(64),
    startTime: z.string().max(32).optional(), // lock-holder.ts: tells a reused pid from the holder
    purpose: z.string().max(256),
    // The lease (disk-lock.ts): which acquisition this is, how long it holds unrenewed, when last renewed.
    lockId: z.string().max(64).optional(),
    leaseMs: z.number().int().positive().max(MAX_LEASE_MS).optional(),
    renewedAt: z.string().max(64).optional(),
  })
  .strict();

/**
 * PUT of a lock object: small JSON, checked, stored — exclusively when asked, or (`ifMatch`, a
 * content tag) only in place of the lock with that content, atomically: how a lease is renewed.
 */
export async function receiveLock(store: Backend, ref: { key: string; diskId: string }, ctx: RequestContext, exclusive: boolean, ifMatch?: string): Promise<number> {
  const body = await readBody(ctx, MAX_LOCK_BYTES, 'a lock');
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new BlockrepError('BAD_REQUEST', 'a lock must be JSON');
  }
  if (!lockBodySchema.safeParse(json).success) throw new BlockrepError('BAD_REQUEST', 'a lock must be {pid, host, createdAt, purpose[, startTime, lockId, leaseMs, renewedAt]}');
  if (ifMatch !== undefined) {
    if (!store.replaceIfMatch) throw new BlockrepError('METHOD_NOT_ALLOWED', 'this repository cannot replace locks conditionally');
    if (!(await store.replaceIfMatch(ref.key, ifMatch, body))) throw new BlockrepError('CHANGED', `the lock of disk ${ref.diskId} is not the one named by If-Match`);
    return body.length;
  }
  try {
    return await store.write(ref.key, body, { exclusive });
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'EXISTS') throw new BlockrepError('EXISTS', `disk ${ref.diskId} is already locked`);
    throw err;
  }
}
