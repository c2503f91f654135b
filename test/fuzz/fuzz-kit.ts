import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { expect } from 'vitest';
import { isBlockrepError, type ErrorCode } from '../../src/shared/blockrep-error.js';

/**
 * What every decoder of untrusted bytes must do, checked by property: it returns, or throws a
 * BlockrepError with one of its stable codes — never a RangeError or TypeError, never after
 * allocating more than its bound, never slowly. Runs are seeded, so a failure repeats;
 * BLOCKREP_FUZZ_RUNS raises the number of runs (a long hunt), BLOCKREP_FUZZ_SEED changes the
 * seed, and BLOCKREP_FUZZ_SAVE=1 writes a failing input into the module's corpus.
 */
export const FUZZ_SEED = Number(process.env.BLOCKREP_FUZZ_SEED ?? 20261203);
const CORPUS = fileURLToPath(new URL('./corpus/', import.meta.url));

/** The number of runs: `base` in a normal test run, BLOCKREP_FUZZ_RUNS when set. */
export function fuzzRuns(base: number): number {
  const env = Number(process.env.BLOCKREP_FUZZ_RUNS);
  return Number.isSafeInteger(env) && env > 0 ? env : base;
}

export interface DecoderContract {
  /** The codes the decoder may throw. */
  codes: readonly ErrorCode[];
  /** The largest single Buffer it may allocate for any input. */
  maxAllocBytes: number;
  /** How long one decode may take (a hang or a quadratic loop fails it). */
  maxMs?: number;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; code: ErrorCode };

const allocators = ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const;

/**
 * Runs `decode` under the contract and returns what it did. The Buffer allocators are watched
 * meanwhile: a request over the bound is refused (so a test never really allocates gigabytes)
 * and fails the contract even if the decoder catches the refusal.
 */
export async function underContract<T>(contract: DecoderContract, decode: () => T | Promise<T>): Promise<Outcome<T>> {
  let largest = 0;
  const originals = allocators.map((name) => [name, Buffer[name]] as const);
  for (const [name, original] of originals) {
    (Buffer as unknown as Record<string, unknown>)[name] = (size: number, ...rest: unknown[]) => {
      largest = Math.max(largest, size);
      if (size > contract.maxAllocBytes) throw new Error(`allocation of ${size} bytes over the bound of ${contract.maxAllocBytes}`);
      return (original as (...args: unknown[]) => Buffer).call(Buffer, size, ...rest);
    };
  }
  const started = performance.now();
  let outcome: Outcome<T>;
  try {
    outcome = { ok: true, value: await decode() };
  } catch (err) {
    if (!isBlockrepError(err)) throw new Error(`the decoder threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}, not a BlockrepError`, { cause: err });
    if (!contract.codes.includes(err.code)) throw new Error(`the decoder threw code ${err.code} (${err.message}), expected one of ${contract.codes.join(', ')}`, { cause: err });
    outcome = { ok: false, code: err.code };
  } finally {
    for (const [name, original] of originals) (Buffer as unknown as Record<string, unknown>)[name] = original;
  }
  const ms = performance.now() - started;
  if (largest > contract.maxAllocBytes) throw new Error(`the decoder asked for ${largest} bytes at once, over its bound of ${contract.maxAllocBytes}`);
  if (ms > (contract.maxMs ?? 2000)) throw new Error(`the decoder took ${Math.round(ms)} ms`);
  return outcome;
}

/** The kept inputs of a module (test/fuzz/corpus/<module>/*.bin), by name, sorted. */
export function corpus(module: string): Array<{ name: string; bytes: Buffer }> {
  const dir = join(CORPUS, module);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.bin'));
  } catch {
    names = [];
  }
  return names.sort().map((name) => ({ name, bytes: readFileSync(join(dir, name)) }));
}

/**
 * Checks a property with the fixed seed. On failure, with BLOCKREP_FUZZ_SAVE=1, the shrunk
 * input (bytes, or a string as UTF-8) is written into the module's corpus, to be replayed by
 * every later run.
 */
export async function checkProperty<T>(module: string, arbitrary: fc.Arbitrary<T>, predicate: (input: T) => Promise<void> | void, numRuns: number, toBytes?: (input: T) => Buffer): Promise<void> {
  const details = await fc.check(
    fc.asyncProperty(arbitrary, async (input) => {
      await predicate(input);
    }),
    { seed: FUZZ_SEED, numRuns: fuzzRuns(numRuns) },
  );
  if (!details.failed) return;
  const example = details.counterexample?.[0];
  if (process.env.BLOCKREP_FUZZ_SAVE === '1' && example !== undefined) {
    const bytes = toBytes ? toBytes(example) : example instanceof Uint8Array ? Buffer.from(example) : Buffer.from(String(example), 'utf8');
    const dir = join(CORPUS, module);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `found-${createHash('sha256').update(bytes).digest('hex').slice(0, 12)}.bin`), bytes);
  }
  const cause = details.errorInstance;
  throw new Error(`${fc.defaultReportMessage(details) ?? 'property failed'}\n${cause instanceof Error ? cause.message : String(cause)}`, { cause });
}

/** One change to a valid encoding; several are applied in turn. */
type Mutation =
  | { kind: 'set'; at: number; value: number }
  | { kind: 'u32'; at: number; value: number }
  | { kind: 'u64'; at: number; value: bigint }
  | { kind: 'truncate'; at: number }
  | { kind: 'append'; bytes: Uint8Array };

const extremeU32 = fc.constantFrom(0, 1, 2, 7, 8, 511, 512, 0x7fffffff, 0x80000000, 0xfffffff8, 0xffffffff);
const extremeU64 = fc.constantFrom(0n, 1n, 2n ** 31n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n);

/**
 * Valid encodings with a few mutations: bytes set, big-endian fields at `fields` (or anywhere)
 * set to boundary values, truncation, trailing garbage. What a damaged or hostile object is.
 */
export function mutated(valid: fc.Arbitrary<Buffer>, fields: number[] = []): fc.Arbitrary<Buffer> {
  const position = fields.length > 0 ? fc.oneof(fc.constantFrom(...fields), fc.nat(4096)) : fc.nat(4096);
  const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(1 << 20), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('u32' as const), at: position, value: fc.oneof(extremeU32, fc.nat({ max: 0xffffffff })) }),
    fc.record({ kind: fc.constant('u64' as const), at: position, value: fc.oneof(extremeU64, fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(1 << 20) }),
    fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  );
  return fc.tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([buf, mutations]) => {
    let out = Buffer.from(buf);
    for (const m of mutations) {
      if (out.length === 0 && m.kind !== 'append') continue;
      switch (m.kind) {
        case 'set':
          out[m.at % out.length] = m.value;
          break;
        case 'u32':
          if (m.at + 4 <= out.length) out.writeUInt32BE(m.value, m.at);
          break;
        case 'u64':
          if (m.at + 8 <= out.length) out.writeBigUInt64BE(m.value, m.at);
          break;
        case 'truncate':
          out = out.subarray(0, m.at % out.length);
          break;
        case 'append':
          out = Buffer.concat([out, m.bytes]);
          break;
      }
    }
    return out;
  });
}

/** Arbitrary bytes that start with `magic` (past the first check, into the interesting code). */
export function withMagic(magic: Buffer, maxLength = 512): fc.Arbitrary<Buffer> {
  return fc.uint8Array({ maxLength }).map((tail) => Buffer.concat([magic, tail]));
}

/** Replays every corpus input of `module` under `check`. */
export async function replayCorpus(module: string, check: (bytes: Buffer) => Promise<void> | void): Promise<number> {
  const inputs = corpus(module);
  for (const { name, bytes } of inputs) {
    try {
      await check(bytes);
    } catch (err) {
      throw new Error(`corpus input ${module}/${name}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
  expect(inputs.length).toBeGreaterThan(0);
  return inputs.length;
}
