#!/usr/bin/env node
/**
 * Benchmark of the scan (src/scan), run against the compiled dist/ by `npm run bench:scan`.
 *
 * Builds a 4 GiB raw image of realistic, non-sparse content under bench/work/ (mostly random
 * data, runs of written zeros and of compressible text) and the same content as qcow2, reads
 * both once into the page cache, then measures, each REPS times (median reported):
 *   - `xxhsum -H1 FILE` (C xxHash, one thread) on the raw file: the bar to meet;
 *   - our hash-only scan (parent hashes equal to the current ones: nothing changed, the
 *     nightly case) of the raw and of the qcow2 image;
 *   - our first full scan (no parent: every non-zero block SHA-256'd and zstd-compressed);
 *   - the hash-only scan at block sizes 64 KiB, 256 KiB, 1 MiB, 4 MiB.
 * Every scan runs in a fresh child process, which reports its own wall time and peak RSS
 * (process.resourceUsage().maxRSS, all threads). Writes bench/results/scan.json and scan.md.
 *
 * Options: --size BYTES (default 4 GiB), --reps N (3), --keep (keep bench/work images),
 * --profile (also write CPU profiles of one hash-only and one full scan to bench/work/prof),
 * --quiet-wait SECONDS (60: before each measurement, wait up to this long for the machine to
 * be otherwise idle).
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { arg, rng } from './lib/workload.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const work = join(here, 'work');
const results = join(here, 'results');
const DEFAULT_BLOCK = MiB; // the CLI's default block size
const SWEEP = [64 * 1024, 256 * 1024, MiB, 4 * MiB];

// ---------------------------------------------------------------- child: one measured scan

/** Runs one scan and prints {seconds, maxRssBytes, ...} as JSON on stdout. */
async function child(job) {
  const { scanImageTuned } = await import(pathToFileURL(join(root, 'dist/scan/scan-image.js')).href);
  let parent;
  if (job.parentFile) {
    const bytes = readFileSync(job.parentFile);
    parent = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
  }
  const record = job.recordFile ? [] : undefined;
  const options = {
    image: { path: job.path, format: job.format },
    blockSize: job.blockSize,
    compress: job.compress,
    ...(job.workers !== undefined ? { workers: job.workers } : {}),
    ...(parent ? { parentHashes: async (start, count) => parent.subarray(start, start + count) } : {}),
  };
  const totals = { blocks: 0, changed: 0, zero: 0, chunks: 0, chunkBytes: 0, bytesRead: 0 };
  const started = process.hrtime.bigint();
  for await (const batch of scanImageTuned(options, job.tuning ?? {})) {
    totals.blocks += batch.count;
    totals.bytesRead += batch.bytesRead;
    for (let i = 0; i < batch.count; i++) {
      totals.changed += batch.changed[i];
      totals.zero += batch.zero[i];
    }
    totals.chunks += batch.chunks.length;
    for (const { chunk } of batch.chunks) totals.chunkBytes += chunk.blob.byteLength;
    record?.push(batch.hashes.slice());
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (record) {
    const all = new BigUint64Array(totals.blocks);
    let at = 0;
    for (const part of record) {
      all.set(part, at);
      at += part.length;
    }
    writeFileSync(job.recordFile, new Uint8Array(all.buffer));
  }
  const usage = process.resourceUsage();
  const maxRssBytes = usage.maxRSS * 1024;
  // CPU of every thread of the process, including its start-up (workers, module loading).
  const cpuSeconds = (usage.userCPUTime + usage.systemCPUTime) / 1e6;
  process.stdout.write(JSON.stringify({ seconds, cpuSeconds, maxRssBytes, ...totals }) + '\n');
}

function runChild(job, extraNodeArgs = []) {
  const before = cpuTicks();
  const started = process.hrtime.bigint();
  const res = spawnSync(process.execPath, [...extraNodeArgs, fileURLToPath(import.meta.url), '--child', JSON.stringify(job)], {
    encoding: 'utf8',
    maxBuffer: 16 * MiB,
    cwd: root,
  });
  if (res.status !== 0) throw new Error(`bench child failed (${res.status}): ${res.stderr}`);
  const sample = JSON.parse(res.stdout.trim().split('\n').at(-1));
  return { ...sample, otherCores: otherCores(before, started, sample.cpuSeconds) };
}

/** Busy and total CPU time of the machine so far, from /proc/stat (in USER_HZ ticks). */
function cpuTicks() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0); // idle + iowait
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/**
 * Cores' worth of CPU that other processes used while one measurement ran: the machine's busy
 * time minus the measured process's own, over the wall time. This machine is shared; a
 * figure well above 0 means the measurement did not have every core to itself.
 */
function otherCores(before, started, ownCpuSeconds) {
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  const after = cpuTicks();
  const busySeconds = (after.busy - before.busy) / USER_HZ;
  return round(Math.max(0, busySeconds - ownCpuSeconds) / wall, 2);
}

const USER_HZ = 100;

/**
 * Waits, up to `maxSeconds`, until other processes use less than a quarter of a core over
 * two seconds: this machine is shared, and a measurement taken while others compute says
 * more about them than about us. The load during each run is recorded either way.
 */
function waitForQuiet(maxSeconds) {
  const deadline = Date.now() + maxSeconds * 1000;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  do {
    const before = cpuTicks();
    Atomics.wait(pause, 0, 0, 2000);
    const busy = (cpuTicks().busy - before.busy) / USER_HZ / 2;
    if (busy < 0.25) return;
  } while (Date.now() < deadline);
}

// ---------------------------------------------------------------- orchestration

async function main() {
  const size = Number(arg('--size', String(4 * GiB)));
  const reps = Number(arg('--reps', '3'));
  const keep = process.argv.includes('--keep');
  const profile = process.argv.includes('--profile');
  const quietWaitSeconds = Number(arg('--quiet-wait', '60'));
  mkdirSync(work, { recursive: true });
  mkdirSync(results, { recursive: true });
  const raw = join(work, `scan-bench-${size}.raw`);
  const qcow2 = join(work, `scan-bench-${size}.qcow2`);

  log(`image: ${(size / GiB).toFixed(2)} GiB under ${work}`);
  let t = Date.now();
  const layout = makeRawImage(raw, size);
  log(`  raw written in ${((Date.now() - t) / 1000).toFixed(1)} s (${fmtLayout(layout)})`);
  t = Date.now();
  if (!existsSync(qcow2) || statSync(qcow2).mtimeMs < statSync(raw).mtimeMs) {
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  }
  sh('sync', []);
  log(`  qcow2 converted in ${((Date.now() - t) / 1000).toFixed(1)} s (${(statSync(qcow2).size / GiB).toFixed(2)} GiB on disk)`);
  // This machine runs DAMON with a pageout scheme (cold memory, page cache included, is
  // reclaimed after ~60 s unused), so "read once" is not enough: every measurement re-reads
  // its file just before it runs.
  const warm = (path) => sh('cat', [path], true);

  // Parent hashes for the hash-only scans: a scan without parent and without compression.
  const hashFile = (bs) => join(work, `scan-bench-${size}-${bs}.hashes`);
  for (const bs of SWEEP) {
    if (!existsSync(hashFile(bs)) || statSync(hashFile(bs)).mtimeMs < statSync(raw).mtimeMs) {
      runChild({ path: raw, format: 'raw', blockSize: bs, compress: false, recordFile: hashFile(bs) });
    }
  }

  const job = (format, blockSize, mode) => ({
    path: format === 'raw' ? raw : qcow2,
    format,
    blockSize,
    compress: true,
    ...(mode === 'hash' ? { parentFile: hashFile(blockSize) } : {}),
  });

  const samples = {};
  const add = (key, sample) => (samples[key] ??= []).push(sample);
  const measure = (key, path, run) => {
    warm(path);
    waitForQuiet(quietWaitSeconds);
    add(key, run());
  };
  for (let rep = 1; rep <= reps; rep++) {
    log(`round ${rep}/${reps} (load ${loadavg()[0].toFixed(2)})`);
    measure('xxhsum raw', raw, () => timeXxhsum(raw, size));
    measure('hash raw', raw, () => runChild(job('raw', DEFAULT_BLOCK, 'hash')));
    measure('hash qcow2', qcow2, () => runChild(job('qcow2', DEFAULT_BLOCK, 'hash')));
    measure('full raw', raw, () => runChild(job('raw', DEFAULT_BLOCK, 'full')));
    measure('full qcow2', qcow2, () => runChild(job('qcow2', DEFAULT_BLOCK, 'full')));
    for (const bs of SWEEP) if (bs !== DEFAULT_BLOCK) measure(`hash raw ${bs}`, raw, () => runChild(job('raw', bs, 'hash')));
    measure('hash raw 1 worker', raw, () => runChild({ ...job('raw', DEFAULT_BLOCK, 'hash'), workers: 1 }));
    measure('hash raw in-thread', raw, () => runChild({ ...job('raw', DEFAULT_BLOCK, 'hash'), workers: 0 }));
    for (const [key, list] of Object.entries(samples)) {
      const s = list.at(-1);
      log(`  ${key.padEnd(22)} ${gbps(size, s.seconds).toFixed(2)} GB/s  ${s.seconds.toFixed(2)} s  cpu ${s.cpuSeconds.toFixed(2)} s  rss ${mib(s.maxRssBytes)}  others ${s.otherCores} cores`);
    }
  }
  samples[`hash raw ${DEFAULT_BLOCK}`] = samples['hash raw'];

  let profiles;
  if (profile) profiles = profileRuns(job);

  const summary = {};
  for (const [key, list] of Object.entries(samples)) {
    const seconds = median(list.map((s) => s.seconds));
    const cpu = median(list.map((s) => s.cpuSeconds));
    summary[key] = {
      medianSeconds: round(seconds, 3),
      gbPerSecond: round(gbps(size, seconds), 3),
      seconds: list.map((s) => round(s.seconds, 3)),
      medianCpuSeconds: round(cpu, 3),
      /** Throughput per CPU-second: what the machine's load cannot distort much. */
      gbPerCpuSecond: round(gbps(size, cpu), 3),
      otherCores: list.map((s) => s.otherCores),
      maxRssMiB: list[0].maxRssBytes === undefined ? undefined : round(Math.max(...list.map((s) => s.maxRssBytes)) / MiB, 1),
      ...(list[0].blocks !== undefined
        ? { blocks: list[0].blocks, changed: list[0].changed, zero: list[0].zero, chunks: list[0].chunks, bytesRead: list[0].bytesRead, chunkBytes: list[0].chunkBytes }
        : {}),
    };
  }
  const ratios = {
    oursOverXxhsumRaw: round(summary['hash raw'].gbPerSecond / summary['xxhsum raw'].gbPerSecond, 2),
    oursOverXxhsumRawPerCpuSecond: round(summary['hash raw'].gbPerCpuSecond / summary['xxhsum raw'].gbPerCpuSecond, 2),
    qcow2OverRawHash: round(summary['hash qcow2'].gbPerSecond / summary['hash raw'].gbPerSecond, 2),
    qcow2OverRawFull: round(summary['full qcow2'].gbPerSecond / summary['full raw'].gbPerSecond, 2),
    peakRssMiB: Math.max(...Object.values(summary).map((s) => s.maxRssMiB ?? 0)),
  };
  const report = {
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, node: process.version, loadAvgAtEnd: loadavg().map((x) => round(x, 2)) },
    image: { bytes: size, layout, qcow2FileBytes: statSync(qcow2).size },
    defaultBlockSize: DEFAULT_BLOCK,
    reps,
    quietWaitSeconds,
    targets: { oursOverXxhsumRaw: 1.0, qcow2OverRawHash: 0.8, peakRssMiB: 200 },
    ratios,
    results: summary,
    ...(profiles ? { profiles } : {}),
  };
  writeFileSync(join(results, 'scan.json'), JSON.stringify(report, null, 2) + '\n');
  writeFileSync(join(results, 'scan.md'), markdown(report));
  log(`wrote bench/results/scan.json and scan.md`);
  log(JSON.stringify(ratios));
  if (!keep) {
    for (const f of readdirSync(work)) if (f.startsWith(`scan-bench-${size}`)) rmSync(join(work, f), { force: true });
    log('removed the bench images (use --keep to keep them)');
  }
}

/** CPU profiles of a hash-only and a full scan (every thread), summarised by self time. */
function profileRuns(job) {
  const out = {};
  for (const [name, j] of [['hash raw', job('raw', DEFAULT_BLOCK, 'hash')], ['full raw', job('raw', DEFAULT_BLOCK, 'full')]]) {
    sh('cat', [j.path], true);
    const dir = join(work, 'prof', name.replace(' ', '-'));
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    runChild(j, ['--cpu-prof', '--cpu-prof-dir', dir]);
    const threads = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => selfTimes(JSON.parse(readFileSync(join(dir, f), 'utf8'))));
    out[name] = { v8ByThread: threads, ...(hasPerf() ? { perf: perfCategories(j) } : {}) };
  }
  return out;
}

function hasPerf() {
  return spawnSync('perf', ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * The whole process under `perf record` (every thread, kernel included), its samples sorted
 * into what they were doing. V8's profiles cannot see the kernel copying file data.
 */
function perfCategories(job) {
  const data = join(work, 'prof', 'perf.data');
  sh('cat', [job.path], true);
  const rec = spawnSync('perf', ['record', '-q', '-F', '999', '-o', data, '--', process.execPath, '--perf-basic-prof', fileURLToPath(import.meta.url), '--child', JSON.stringify(job)], { encoding: 'utf8', cwd: root });
  if (rec.status !== 0) return { error: rec.stderr.slice(0, 300) };
  const rep = spawnSync('perf', ['report', '-i', data, '--no-children', '--sort', 'dso,sym', '--stdio', '-g', 'none', '--field-separator', '|'], {
    encoding: 'utf8',
    maxBuffer: 64 * MiB,
  });
  const categories = {};
  for (const line of rep.stdout.split('\n')) {
    if (line.startsWith('#')) continue;
    const [pctField, dsoField, symField] = line.split('|');
    if (symField === undefined) continue;
    const pct = Number.parseFloat(pctField);
    const dso = dsoField.trim();
    const sym = symField.trim();
    let cat = 'other';
    if (/copy_to_iter|copy_user|copy_page_to_iter/.test(sym)) cat = 'kernel: copy from page cache';
    else if (/wasm-function/.test(sym)) cat = 'xxh64 (WebAssembly)';
    else if (dso.includes('kernel')) cat = 'kernel: other (page cache lookup, scheduling, faults)';
    else if (/sha256|SHA256/i.test(sym)) cat = 'SHA-256';
    else if (/ZSTD|zstd/.test(sym) || dso.includes('zstd')) cat = 'zstd';
    else if (/memcmp|memmove|memcpy|memset/.test(sym)) cat = 'libc memcmp/memcpy';
    else if (dso === 'node' || dso.includes('JIT') || dso.startsWith('libnode')) cat = 'Node/V8 (JavaScript, start-up, GC)';
    else if (dso.includes('libc')) cat = 'libc other (malloc...)';
    categories[cat] = round((categories[cat] ?? 0) + pct, 1);
  }
  return categories;
}

function selfTimes(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const dt = profile.timeDeltas;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    const f = node.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url ? f.url.split('/').slice(-2).join('/') : ''}`.trim();
    self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  return {
    totalMs: round(total / 1000, 0),
    top: [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => ({ fn: k, ms: round(v / 1000, 0), pct: round((100 * v) / total, 1) })),
  };
}

// ---------------------------------------------------------------- the image

/**
 * Writes `size` bytes: runs of 1..16 MiB chosen by a seeded generator, ~80% random, ~10%
 * written zeros, ~10% log-like text. Skips the work when an image of that size and layout
 * seed is already there.
 */
function makeRawImage(path, size) {
  const stamp = `${path}.layout.json`;
  if (existsSync(path) && existsSync(stamp) && statSync(path).size === size) {
    const saved = JSON.parse(readFileSync(stamp, 'utf8'));
    if (saved.version === 1) return saved.layout;
  }
  const next = rng(0x9e3779b9);
  const text = Buffer.alloc(16 * MiB);
  {
    let at = 0;
    let n = 0;
    while (at < text.length) {
      n++;
      const line = `2026-01-${String((n % 28) + 1).padStart(2, '0')}T03:${String(n % 60).padStart(2, '0')}:07 vm-${n % 17} kernel: [${n * 7}.${n % 1000}] eth0: rx ${n * 1531} packets, ${n % 3 ? 'link up' : 'carrier lost'}\n`;
      at += text.write(line, at, 'latin1');
    }
  }
  const buf = Buffer.alloc(16 * MiB);
  const zeros = Buffer.alloc(16 * MiB);
  const fd = openSync(path, 'w');
  const layout = { random: 0, zeros: 0, text: 0 };
  try {
    let at = 0;
    while (at < size) {
      const r = next();
      const kind = r < 0.8 ? 'random' : r < 0.9 ? 'zeros' : 'text';
      const bytes = Math.min(size - at, (1 + Math.floor(next() * 16)) * MiB);
      let src;
      if (kind === 'random') src = randomFillSync(buf, 0, bytes);
      else if (kind === 'zeros') src = zeros;
      else src = text;
      for (let done = 0; done < bytes; ) done += writeSync(fd, src, done, bytes - done, at + done);
      layout[kind] += bytes;
      at += bytes;
    }
  } finally {
    closeSync(fd);
  }
  writeFileSync(stamp, JSON.stringify({ version: 1, layout }));
  return layout;
}

// ---------------------------------------------------------------- helpers

/** `xxhsum -H1 FILE` under /usr/bin/time: wall time, CPU time and peak RSS. */
function timeXxhsum(path, size) {
  const before = cpuTicks();
  const started = process.hrtime.bigint();
  const res = spawnSync('/usr/bin/time', ['-f', 'TIME %e %U %S %M', 'xxhsum', '-H1', path], { encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (res.status !== 0) throw new Error(`xxhsum failed: ${res.stderr}`);
  const [, , user, sys, rssKiB] = res.stderr.trim().split('\n').at(-1).split(' ').map(Number);
  const cpuSeconds = user + sys;
  return { seconds, cpuSeconds, maxRssBytes: rssKiB * 1024, bytes: size, otherCores: otherCores(before, started, cpuSeconds) };
}

function sh(cmd, args, quiet = false) {
  const res = spawnSync(cmd, args, { stdio: quiet ? ['ignore', 'ignore', 'inherit'] : 'inherit' });
  if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${res.status ?? res.error?.message})`);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const gbps = (bytes, seconds) => bytes / 1e9 / seconds;
const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;
const mib = (b) => (b === undefined ? '-' : `${(b / MiB).toFixed(0)} MiB`);
const log = (s) => process.stderr.write(s + '\n');
const fmtLayout = (l) => Object.entries(l).map(([k, v]) => `${k} ${(v / GiB).toFixed(2)} GiB`).join(', ');
const kib = (b) => (b >= MiB ? `${b / MiB} MiB` : `${b / 1024} KiB`);

function markdown(r) {
  const row = (label, key) => {
    const s = r.results[key];
    return `| ${label} | ${s.gbPerSecond.toFixed(2)} | ${s.medianSeconds.toFixed(2)} | ${s.seconds.map((x) => x.toFixed(2)).join(' / ')} | ${s.medianCpuSeconds.toFixed(2)} | ${s.gbPerCpuSecond.toFixed(2)} | ${s.maxRssMiB ?? '–'} | ${s.otherCores.join(' / ')} |`;
  };
  const header = ['| measurement | GB/s | median s | runs s | CPU s | GB per CPU s | peak RSS MiB | other load, cores |', '|---|---|---|---|---|---|---|---|'];
  const ok = (v, target, better) => (better === 'high' ? v >= target : v <= target) ? 'met' : 'NOT met';
  const lines = [
    '# Scan benchmark',
    '',
    `Generated by \`npm run bench:scan\` (bench/scan-bench.mjs) on ${r.date}.`,
    `Machine: ${r.machine.cpu}, ${r.machine.cores} cores, Node ${r.machine.node}. Median of ${r.reps} runs; GB = 10^9 bytes.`,
    `Image: ${(r.image.bytes / GiB).toFixed(2)} GiB raw, page-cached (re-read before every measurement), non-sparse: ${fmtLayout(r.image.layout)}; `
      + `as qcow2 (qemu-img convert, which leaves zero runs unallocated): ${(r.image.qcow2FileBytes / GiB).toFixed(2)} GiB.`,
    `Block size ${kib(r.defaultBlockSize)} (the CLI default) unless stated; scans use the default 2 workers.`,
    'Each scan runs in a fresh process: times include starting Node, loading modules and starting the workers.',
    'Before each measurement the bench waits (up to ' + r.quietWaitSeconds + ' s) for the shared machine to be otherwise idle.',
    '"CPU s" is user + system time of all threads; "other load" is the CPU other processes on this shared machine used during each run, in cores (of ' + r.machine.cores + ').',
    'Analysis and how to read these figures: [scan-notes.md](scan-notes.md).',
    '',
    ...header,
    row('`xxhsum -H1` raw (C, 1 thread)', 'xxhsum raw'),
    row('scan raw, hash only (nothing changed)', 'hash raw'),
    row('scan qcow2, hash only', 'hash qcow2'),
    row('scan raw, first full (SHA-256 + zstd of every non-zero block)', 'full raw'),
    row('scan qcow2, first full', 'full qcow2'),
    row('scan raw, hash only, workers: 1', 'hash raw 1 worker'),
    row('scan raw, hash only, workers: 0 (in-thread)', 'hash raw in-thread'),
    '',
    '| target | value | target | |',
    '|---|---|---|---|',
    `| ours / xxhsum, raw hash-only (wall time) | ${r.ratios.oursOverXxhsumRaw} | ≥ 1.0 | ${ok(r.ratios.oursOverXxhsumRaw, 1.0, 'high')} |`,
    `| ours / xxhsum, raw hash-only, per CPU-second | ${r.ratios.oursOverXxhsumRawPerCpuSecond} | | |`,
    `| qcow2 / raw, hash-only | ${r.ratios.qcow2OverRawHash} | ≥ 0.8 | ${ok(r.ratios.qcow2OverRawHash, 0.8, 'high')} |`,
    `| qcow2 / raw, first full | ${r.ratios.qcow2OverRawFull} | | |`,
    `| peak RSS of any scan, MiB | ${r.ratios.peakRssMiB} | ≤ 200 | ${ok(r.ratios.peakRssMiB, 200, 'low')} |`,
    '',
    '## Hash-only scan of the raw image by block size',
    '',
    ...header,
    ...SWEEP.map((bs) => row(kib(bs), `hash raw ${bs}`)),
    '',
  ];
  if (r.profiles) {
    lines.push('## Where the time goes', '');
    for (const [name, p] of Object.entries(r.profiles)) {
      lines.push(`### ${name}`, '');
      if (p.perf) {
        lines.push('Whole process under `perf record` (% of CPU samples, all threads, kernel included):', '');
        lines.push(...Object.entries(p.perf).sort((a, b) => b[1] - a[1]).map(([k, v]) => `- ${k}: ${v}%`), '');
      }
      lines.push('V8 CPU profile, self time per JavaScript thread (main first):', '');
      p.v8ByThread.forEach((t, i) => {
        lines.push(`- thread ${i + 1} (${t.totalMs} ms sampled): ` + t.top.map((x) => `${x.fn} ${x.pct}%`).join('; '));
      });
      lines.push('');
    }
  }
  return lines.join('\n') + '\n';
}

// Last, so that every const above is initialised.
if (process.argv[2] === '--child') {
  await child(JSON.parse(process.argv[3]));
} else {
  await main();
}
