import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';

/**
 * What one client may hold of the server, so that a token holder cannot starve the others:
 * request bodies in memory (all of them, per token and per address), how slowly a body may
 * arrive, connections per address, and the work of one patch plan.
 */
export interface ServerLimits {
  /** Request bytes held in memory at once by all requests together. */
  memoryBytes: number;
  /** Of which one token, and one remote address, may hold at most this. */
  clientMemoryBytes: number;
  /** A request waits this long for room in the whole budget before it is refused (503). */
  memoryWaitMs: number;
  /** A body must bring at least this many bytes in every `bodyWindowMs` (or end), else 503. */
  minBodyBytes: number;
  bodyWindowMs: number;
  /** Open connections from one remote address; more are refused at once (503). */
  connectionsPerAddress: number;
  /** Raw bytes of base chunks one patch plan may decode; later items get no plan (sent whole). */
  planBaseBytes: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  memoryBytes: 256 * MiB,
  // Half: a client at its share leaves the other half to everybody else. 16 uploads of 4 MiB
  // blocks fit well within it; more get 503 and are retried by the client.
  clientMemoryBytes: 128 * MiB,
  memoryWaitMs: 10_000,
  // 16 KiB per 20 s (under 1 KiB/s) is far below any link a backup runs over, even 16
  // uploads sharing a throttled one; a trickle that slow is holding memory, not sending.
  minBodyBytes: 16 * 1024,
  bodyWindowMs: 20_000,
  connectionsPerAddress: 64,
  // A client's batch is at most 64 blocks or 16 MiB of blobs (app/chunk-uploader.ts).
  planBaseBytes: 64 * MiB,
};

/** Environment variables that override the defaults (tests and odd deployments). */
export const LIMIT_ENV: Record<keyof ServerLimits, string> = {
  memoryBytes: 'BLOCKREP_SERVE_MEMORY_BYTES',
  clientMemoryBytes: 'BLOCKREP_SERVE_CLIENT_MEMORY_BYTES',
  memoryWaitMs: 'BLOCKREP_SERVE_MEMORY_WAIT_MS',
  minBodyBytes: 'BLOCKREP_SERVE_MIN_BODY_BYTES',
  bodyWindowMs: 'BLOCKREP_SERVE_BODY_WINDOW_MS',
  connectionsPerAddress: 'BLOCKREP_SERVE_CONNECTIONS_PER_ADDRESS',
  planBaseBytes: 'BLOCKREP_SERVE_PLAN_BASE_BYTES',
};

const limitSchema = z.string().regex(/^\d{1,15}$/).transform(Number).refine((n) => n >= 1, 'must be at least 1');

/** The defaults, with those set in `env` checked and applied (USAGE for a bad value). */
export function serverLimitsFromEnv(env: NodeJS.ProcessEnv): ServerLimits {
  const limits = { ...DEFAULT_SERVER_LIMITS };
  for (const [field, name] of Object.entries(LIMIT_ENV) as Array<[keyof ServerLimits, string]>) {
    const text = env[name];
    if (text === undefined || text === '') continue;
    const parsed = limitSchema.safeParse(text);
    if (!parsed.success) throw new BlockrepError('USAGE', `${name}=${JSON.stringify(text.slice(0, 40))}: a whole number of at least 1 is expected`);
    limits[field] = parsed.data;
  }
  return limits;
}
