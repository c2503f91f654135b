import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Small wrappers around qemu-img and qemu-io for tests: build images, convert them to raw
 * (the oracle for what a reader must return), look at their mapping, and patch header bytes.
 * Every helper throws with the tool's stderr when it fails.
 */

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs a program (no shell) and resolves with its output; rejects with stderr on failure. */
export function run(program: string, args: readonly string[], options: { cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(program, args, { cwd: options.cwd, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${program} ${args.join(' ')} failed: ${stderr.trim() || stdout.trim() || err.message}`, { cause: err }));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

export async function qemuImg(...args: string[]): Promise<string> {
  return (await run('qemu-img', args)).stdout;
}

/**
 * Runs qemu-io commands (e.g. "write -P 0xab 0 64k", "write -z 1M 64k", "write -c 0 64k")
 * against an image; fails if any command fails.
 */
export async function qemuIo(image: string, commands: readonly string[], options: { format?: string } = {}): Promise<string> {
  const args = ['-f', options.format ?? 'qcow2'];
  for (const command of commands) args.push('-c', command);
  args.push(image);
  const { stdout, stderr } = await run('qemu-io', args);
  // qemu-io exits 1 on failed commands, but be strict about messages too.
  if (/\b(failed|error)\b/i.test(stderr) || /\bfailed\b/i.test(stdout)) throw new Error(`qemu-io ${args.join(' ')}: ${stderr || stdout}`);
  return stdout;
}

export interface CreateImageOptions {
  /** qemu-img format: raw, qcow2, vmdk, ... */
  format: string;
  /** Bytes, or a qemu-img size such as "4M". */
  size?: number | string;
  /** -o options, e.g. { cluster_size: 4096, compat: '0.10', extended_l2: 'on' }. */
  options?: Record<string, string | number | boolean>;
  backing?: string;
  backingFormat?: string;
  /** --object values, e.g. "secret,id=sec0,data=abc". */
  objects?: string[];
}

export async function createImage(path: string, opts: CreateImageOptions): Promise<void> {
  const args = ['create', '-q', '-f', opts.format];
  for (const object of opts.objects ?? []) args.push('--object', object);
  const o = Object.entries(opts.options ?? {}).map(([k, v]) => `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : v}`);
  if (o.length > 0) args.push('-o', o.join(','));
  if (opts.backing !== undefined) args.push('-b', opts.backing, '-F', opts.backingFormat ?? 'qcow2');
  args.push(path);
  if (opts.size !== undefined) args.push(String(opts.size));
  // A LUKS image: qemu-img times PBKDF2 by the thread's CPU time, which the kernel may count in
  // whole ticks; on a busy machine it sometimes reads 0 ms and gives up ("Unable to get accurate
  // CPU usage", about 1 in 10 under load). That measurement is retried, nothing else.
  for (let attempt = 1; ; attempt++) {
    try {
      await qemuImg(...args);
      return;
    } catch (err) {
      if (attempt >= 5 || !(err instanceof Error) || !err.message.includes('Unable to get accurate CPU usage')) throw err;
    }
  }
}

/** qemu-img convert to another format (e.g. raw → qcow2 with options, or compressed with -c). */
export async function convertImage(
  from: string,
  to: string,
  opts: { fromFormat?: string; toFormat: string; options?: Record<string, string | number | boolean>; compress?: boolean },
): Promise<void> {
  const args = ['convert', '-q'];
  if (opts.fromFormat !== undefined) args.push('-f', opts.fromFormat);
  args.push('-O', opts.toFormat);
  if (opts.compress === true) args.push('-c');
  const o = Object.entries(opts.options ?? {}).map(([k, v]) => `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : v}`);
  if (o.length > 0) args.push('-o', o.join(','));
  args.push(from, to);
  await qemuImg(...args);
}

/** What QEMU reads from the image, written as a raw file: the oracle for readers. */
export async function convertToRaw(image: string, out: string, format?: string): Promise<void> {
  await convertImage(image, out, { toFormat: 'raw', ...(format === undefined ? {} : { fromFormat: format }) });
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** `qemu-img map --output=json`: the allocation status of the whole chain. */
export async function imageMap(image: string, format?: string): Promise<MapEntry[]> {
  const args = ['map', '--output=json'];
  if (format !== undefined) args.push('-f', format);
  args.push(image);
  return JSON.parse(await qemuImg(...args)) as MapEntry[];
}

/** `qemu-img info --output=json`. */
export async function imageInfo(image: string): Promise<Record<string, unknown>> {
  return JSON.parse(await qemuImg('info', '--output=json', image)) as Record<string, unknown>;
}

/** Overwrites bytes of a file in place (for corrupting headers and tables in tests). */
export async function patchFile(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.byteLength, offset);
  } finally {
    await fh.close();
  }
}

/** Reads bytes of a file. */
export async function readFileRange(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

export function u32be(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
}

export function u64be(value: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  return b;
}

/** A fresh temporary directory; remove it with removeTempDir. */
export async function makeTempDir(prefix = 'blockrep-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** Deterministic bytes (xorshift32) — compressible when `alphabet` is small. */
export function patternBytes(length: number, seed: number, alphabet = 256): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = alphabet >= 256 ? x & 0xff : 0x41 + (x % alphabet);
  }
  return out;
}
