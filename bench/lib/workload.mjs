/**
 * What the benchmarks share: argument reading, a seeded generator, the sample image and the
 * nightly change the issues define (1 % of the image, half scattered 4–64 KiB writes, half
 * 1–8 MiB extents), the blockrep CLI runner and rsync's literal-data count as the reference.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The value after `--name` on the command line, or `def`. */
export function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

/** A seeded xorshift so every run changes the same places. */
export function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

/** 60 % random, 20 % text-like, 20 % zeros, in 8 MiB stripes: compressible like a real disk, not entirely. */
export function makeImage(path, size) {
  const fd = openSync(path, 'w');
  const stripe = 8 * MiB;
  const buf = Buffer.alloc(stripe);
  const text = Buffer.from('the quick brown fox jumps over the lazy dog; blockrep keeps every version. '.repeat(stripe / 64));
  for (let off = 0, i = 0; off < size; off += stripe, i++) {
    const kind = i % 5;
    if (kind < 3) randomFillSync(buf);
    else if (kind === 3) text.copy(buf, 0, 0, stripe);
    else buf.fill(0);
    writeSync(fd, buf, 0, Math.min(stripe, size - off), off);
  }
  closeSync(fd);
}

/** The nightly change: `percent` % of the image (default 1), ~half scattered 4–64 KiB writes, ~half 1–8 MiB extents. Returns bytes written. */
export function changeImage(path, size, seed, percent = 1) {
  const r = rng(seed);
  const fd = openSync(path, 'r+');
  const target = (size * percent) / 100;
  let written = 0;
  while (written < target / 2) {
    const len = Math.round(((4 + r() * 60) * KiB) / 512) * 512;
    const off = Math.floor((r() * (size - len)) / 512) * 512;
    const b = Buffer.alloc(len);
    randomFillSync(b);
    writeSync(fd, b, 0, len, off);
    written += len;
  }
  while (written < target) {
    const len = Math.round(Math.min((1 + r() * 7) * MiB, target - written + MiB));
    const off = Math.floor((r() * (size - len)) / 4096) * 4096;
    const b = Buffer.alloc(len);
    randomFillSync(b);
    writeSync(fd, b, 0, len, off);
    written += len;
  }
  closeSync(fd);
  return written;
}

/**
 * Runs the blockrep CLI with `--json`; returns its wall time, exit status and parsed report.
 * @param {string[]} args
 * @param {{ allowFailure?: boolean, env?: NodeJS.ProcessEnv }} [options]
 */
export function blockrep(args, { allowFailure = false, env } = {}) {
  const t = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/blockrep.js'), ...args, '--json'], {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
    env: env ? { ...process.env, ...env } : process.env,
  });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0 && !allowFailure) throw new Error(`blockrep ${args[0]} exited ${r.status}: ${r.stdout}${r.stderr}`);
  return { seconds, status: r.status, report: JSON.parse(r.stdout), stderr: r.stderr };
}

/** `rsync --no-whole-file --inplace` of `src` onto `dst`: what a block-diff tool sends for the change. */
export function rsyncLiteral(src, dst) {
  const t = process.hrtime.bigint();
  const r = spawnSync('rsync', ['--no-whole-file', '--inplace', '--ignore-times', '--stats', src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`rsync failed: ${r.stderr}`);
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const n = (re) => {
    const m = re.exec(r.stdout);
    return m ? Number(m[1].replace(/,/g, '')) : NaN;
  };
  return {
    seconds,
    literalBytes: n(/Literal data: ([\d,]+) bytes/),
    sentBytes: n(/Total bytes sent: ([\d,]+)/),
    receivedBytes: n(/Total bytes received: ([\d,]+)/),
  };
}

/** What the files under `dir` hold (`apparentBytes`) and occupy on the file system (`allocatedBytes`). */
export function diskUsage(dir) {
  const du = (flags) => Number(execFileSync('du', [...flags, dir], { encoding: 'utf8' }).split('\t')[0]);
  return { apparentBytes: du(['-sb']), allocatedBytes: du(['-s', '-B1']) };
}
