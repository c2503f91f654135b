#!/usr/bin/env node
/**
 * How the block size trades backup time against what a nightly change costs to store: for
 * each block size, back up an image through the real CLI (first, full backup), make a nightly
 * change of 1 % of it (scattered 4–64 KiB writes plus a few 1–8 MiB extents, as the network
 * issue's benchmark defines it), back up again. Reports time, chunks and bytes stored for
 * both runs, and the second run's stored bytes against the bytes the change wrote.
 * `rsync --no-whole-file --inplace` of the same change between two local copies is run in the
 * same run as the reference for what a block-diff tool sends (`--stats`, literal data).
 *
 * `npm run bench:block-size` (options: --size BYTES, default 1 GiB; --sizes 64K,256K,1M,4M).
 * Writes bench/results/block-size.json and block-size.md.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync, copyFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const KiB = 1024;
const MiB = 1024 * KiB;
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const work = join(here, 'work', 'block-size');
const results = join(here, 'results');
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : def;
};
const size = Number(arg('--size', String(1024 * MiB)));
const sizes = arg('--sizes', '64K,256K,1M,4M').split(',');

/** A seeded xorshift so every run changes the same places. */
function rng(seed) {
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

function makeImage(path) {
  // 60 % random, 20 % text-like, 20 % zeros, in 8 MiB stripes.
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

/** The nightly change: 1 % of the image, ~half scattered 4–64 KiB writes, ~half 1–8 MiB extents. */
function changeImage(path, seed) {
  const r = rng(seed);
  const fd = openSync(path, 'r+');
  const target = size / 100;
  let written = 0;
  while (written < target / 2) {
    const len = Math.round((4 + r() * 60) * KiB / 512) * 512;
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

function blockrep(args) {
  const t = process.hrtime.bigint();
  const out = execFileSync(process.execPath, [join(root, 'bin/blockrep.js'), ...args, '--json'], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  return { seconds, report: JSON.parse(out) };
}

function rsyncLiteral(src, dst) {
  const r = spawnSync('rsync', ['--no-whole-file', '--inplace', '--ignore-times', '--stats', src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`rsync failed: ${r.stderr}`);
  const lit = /Literal data: ([\d,]+) bytes/.exec(r.stdout);
  const sent = /Total bytes sent: ([\d,]+)/.exec(r.stdout);
  const recv = /Total bytes received: ([\d,]+)/.exec(r.stdout);
  const n = (m) => (m ? Number(m[1].replace(/,/g, '')) : NaN);
  return { literalBytes: n(lit), sentBytes: n(sent), receivedBytes: n(recv) };
}

rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
mkdirSync(results, { recursive: true });
const image = join(work, 'disk.img');
makeImage(image);
const rows = [];
const pristine = join(work, 'pristine.img');
copyFileSync(image, pristine);
let changedBytes = 0;
for (const bs of sizes) {
  copyFileSync(pristine, image);
  const repo = join(work, `repo-${bs}`);
  const first = blockrep(['backup', image, '--repo', repo, '--block-size', bs]);
  changedBytes = changeImage(image, 42);
  const second = blockrep(['backup', image, '--repo', repo, '--block-size', bs]);
  const d1 = first.report.disks[0];
  const d2 = second.report.disks[0];
  rows.push({
    blockSize: bs,
    firstSeconds: first.seconds,
    firstChunks: d1.newChunks,
    firstStoredBytes: d1.bytesSent,
    secondSeconds: second.seconds,
    secondChangedBlocks: d2.changedBlocks,
    secondStoredBytes: d2.bytesSent,
  });
  rmSync(repo, { recursive: true, force: true });
}
// rsync of the same change between two local copies (its block size for this file is its own choice).
copyFileSync(pristine, image);
const dst = join(work, 'rsync-dst.img');
copyFileSync(pristine, dst);
changeImage(image, 42);
const rs = rsyncLiteral(image, dst);

const result = { date: new Date().toISOString(), cpus: cpus().length, imageBytes: size, changedBytes, rsync: rs, rows };
writeFileSync(join(results, 'block-size.json'), `${JSON.stringify(result, null, 2)}\n`);
const mb = (n) => (n / 1e6).toFixed(1);
const md = [
  '# Block size: backup time against the cost of a nightly change',
  '',
  `Generated by \`npm run bench:block-size\` (bench/block-size-bench.mjs) on ${result.date}, ${result.cpus} cores.`,
  `Image: ${mb(size)} MB raw (60 % random, 20 % text, 20 % zeros). Nightly change: ${mb(changedBytes)} MB (1 %), half scattered 4–64 KiB writes, half 1–8 MiB extents.`,
  `Reference in the same run: \`rsync --no-whole-file --inplace\` of the same change between local copies: ${mb(rs.literalBytes)} MB literal data, ${mb(rs.sentBytes + rs.receivedBytes)} MB total both ways.`,
  '',
  '| block size | first backup s | chunks | stored MB | nightly backup s | changed blocks | nightly stored MB | stored / changed | stored / rsync literal |',
  '|---|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.blockSize} | ${r.firstSeconds.toFixed(1)} | ${r.firstChunks} | ${mb(r.firstStoredBytes)} | ${r.secondSeconds.toFixed(1)} | ${r.secondChangedBlocks} | ${mb(r.secondStoredBytes)} | ${(r.secondStoredBytes / changedBytes).toFixed(2)} | ${(r.secondStoredBytes / rs.literalBytes).toFixed(2)} |`),
  '',
].join('\n');
writeFileSync(join(results, 'block-size.md'), md);
process.stdout.write(md);
if (!process.argv.includes('--keep')) rmSync(work, { recursive: true, force: true });
