#!/usr/bin/env node
/**
 * Encryption benchmark (issue #13). On the same image, in the same run:
 *   1. the first full backup to a local folder, unencrypted and encrypted, alternated, --reps
 *      times each: wall time and CPU time (user + system of the blockrep process and its scan
 *      workers); the target is encrypted throughput ≥ 0.8 × unencrypted;
 *   2. the nightly 1 % change (bench/lib/workload.mjs) sent to a real `blockrep serve` on
 *      loopback that holds the previous version: the bytes blockrep sent (its `bytesSent`: HTTP
 *      bodies, not headers), unencrypted (with slice patches and manifest deltas) and encrypted
 *      (whole sealed chunks, whole sealed manifest), at the default block size and at smaller
 *      ones, against rsync's literal data for the same change (`rsync --no-whole-file`).
 *
 * `npm run bench:crypt`. Options: --size BYTES (1 GiB), --reps N (3), --keep.
 * Writes bench/results/crypt.json and crypt.md, with the machine's load (this machine is shared).
 */
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { GiB, KiB, MiB, arg, blockrep, changeImage, makeImage, repoRoot, rsyncLiteral } from './lib/workload.mjs';

const size = Number(arg('--size', String(GiB)));
const reps = Number(arg('--reps', '3'));
const work = join(repoRoot, 'bench', 'work', 'crypt');
const results = join(repoRoot, 'bench', 'results');
const PASS = { BLOCKREP_PASSWORD: 'bench passphrase' };
const log = (s) => process.stderr.write(`${s}\n`);

/** CPU seconds of waited-for children so far (cutime + cstime of /proc/self/stat). */
function childCpuSeconds() {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

function timed(args, env) {
  const cpu0 = childCpuSeconds();
  const load0 = loadavg()[0];
  const r = blockrep(args, env ? { env } : {});
  return { ...r, cpuSeconds: childCpuSeconds() - cpu0, load1: Math.max(load0, loadavg()[0]) };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function startServe(root) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'blockrep.js'), 'serve', '--root', root, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve({ url: m[1], stop: () => child.kill('SIGTERM') });
    });
    child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
  });
}

async function main() {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const image = join(work, 'disk.raw');
  log(`making a ${(size / GiB).toFixed(2)} GiB image`);
  makeImage(image, size);
  const started = new Date().toISOString();
  const loadBefore = loadavg();

  // 1. First full backup, alternated so both see the same machine.
  const full = { plain: [], encrypted: [] };
  for (let i = 0; i < reps; i++) {
    for (const kind of i % 2 === 0 ? ['plain', 'encrypted'] : ['encrypted', 'plain']) {
      const repo = join(work, `full-${kind}-${i}`);
      if (kind === 'encrypted') blockrep(['init', '--repo', repo, '--encrypt'], { env: PASS });
      // The same block size for both (an encrypted repository's default is smaller: see the nightly part).
      const r = timed(['backup', image, '--repo', repo, '--disk', 'bench', '--block-size', String(256 * KiB)], kind === 'encrypted' ? PASS : undefined);
      full[kind].push({ seconds: r.seconds, cpuSeconds: r.cpuSeconds, bytesSent: r.report.disks[0].bytesSent, load1: r.load1 });
      log(`full ${kind} #${i + 1}: ${r.seconds.toFixed(2)} s wall, ${r.cpuSeconds.toFixed(2)} s CPU, load ${r.load1.toFixed(1)}`);
      rmSync(repo, { recursive: true, force: true });
    }
  }
  const fullRow = (kind) => {
    const s = median(full[kind].map((x) => x.seconds));
    const c = median(full[kind].map((x) => x.cpuSeconds));
    return { medianSeconds: s, gbPerSecond: size / 1e9 / s, medianCpuSeconds: c, gbPerCpuSecond: size / 1e9 / c, runs: full[kind] };
  };
  const fullResult = { plain: fullRow('plain'), encrypted: fullRow('encrypted') };
  const ratio = fullResult.encrypted.gbPerSecond / fullResult.plain.gbPerSecond;
  const cpuRatio = fullResult.encrypted.gbPerCpuSecond / fullResult.plain.gbPerCpuSecond;

  // 2. Nightly 1 % over loopback HTTP, against rsync on the same change.
  const previous = join(work, 'previous.raw');
  copyFileSync(image, previous);
  const nightly = [];
  const configs = [
    { kind: 'plain', blockSize: 256 * KiB },
    { kind: 'encrypted', blockSize: 256 * KiB },
    { kind: 'encrypted', blockSize: 64 * KiB },
    { kind: 'encrypted', blockSize: 16 * KiB },
  ];
  const serveRoots = [];
  const servers = [];
  for (const c of configs) {
    const root = join(work, `serve-${c.kind}-${c.blockSize}`);
    serveRoots.push(root);
    const server = await startServe(root);
    servers.push(server);
    const env = c.kind === 'encrypted' ? PASS : undefined;
    if (c.kind === 'encrypted') blockrep(['init', '--repo', server.url, '--encrypt'], { env: PASS });
    blockrep(['backup', previous, '--repo', server.url, '--disk', 'bench', '--block-size', String(c.blockSize)], env ? { env } : {});
    c.url = server.url;
    c.env = env;
  }
  const changed = changeImage(image, size, 13, 1);
  for (const c of configs) {
    const r = timed(['backup', image, '--repo', c.url, '--disk', 'bench', '--block-size', String(c.blockSize)], c.env);
    const d = r.report.disks[0];
    nightly.push({ kind: c.kind, blockSize: c.blockSize, bytesSent: d.bytesSent, changedBlocks: d.changedBlocks, seconds: r.seconds, cpuSeconds: r.cpuSeconds, load1: r.load1 });
    log(`nightly ${c.kind} ${c.blockSize / KiB} KiB: ${(d.bytesSent / MiB).toFixed(2)} MiB sent`);
  }
  for (const s of servers) s.stop();
  const rsync = rsyncLiteral(image, previous);
  log(`rsync: literal ${(rsync.literalBytes / MiB).toFixed(2)} MiB, sent ${(rsync.sentBytes / MiB).toFixed(2)} MiB`);

  const out = {
    bench: 'crypt',
    started,
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, memoryBytes: totalmem(), node: process.version, loadBefore, loadAfter: loadavg() },
    imageBytes: size,
    reps,
    full: fullResult,
    fullRatio: ratio,
    fullCpuRatio: cpuRatio,
    nightly: { changedBytes: changed, rsync, runs: nightly },
  };
  writeFileSync(join(results, 'crypt.json'), `${JSON.stringify(out, null, 2)}\n`);

  const mib = (b) => (b / MiB).toFixed(2);
  const lines = [
    '# Encryption benchmark',
    '',
    `Generated by \`npm run bench:crypt\` (bench/crypt-bench.mjs) on ${started}.`,
    `Machine: ${out.machine.cpu}, ${out.machine.cores} cores, Node ${process.version}; shared: 1-minute load ${loadBefore[0].toFixed(2)} before, ${out.machine.loadAfter[0].toFixed(2)} after (each run's highest 1-minute load is in crypt.json).`,
    `Image: ${(size / GiB).toFixed(2)} GiB raw (bench/lib/workload.mjs: 60 % random, 20 % text, 20 % zeros), page-cached; block size 256 KiB for the full backups, 2 scan workers.`,
    '',
    `## First full backup to a local folder (median of ${reps}, alternated)`,
    '',
    '| | GB/s (wall) | median s | runs s | CPU s (median) | GB per CPU s |',
    '|---|---|---|---|---|---|',
    ...['plain', 'encrypted'].map((k) => {
      const r = fullResult[k];
      return `| ${k === 'plain' ? 'unencrypted' : 'encrypted'} | ${r.gbPerSecond.toFixed(3)} | ${r.medianSeconds.toFixed(2)} | ${r.runs.map((x) => x.seconds.toFixed(2)).join(' / ')} | ${r.medianCpuSeconds.toFixed(2)} | ${r.gbPerCpuSecond.toFixed(3)} |`;
    }),
    '',
    `Encrypted / unencrypted throughput: **${ratio.toFixed(2)}×** wall (target ≥ 0.8: ${ratio >= 0.8 ? 'met' : 'NOT met'}), ${cpuRatio.toFixed(2)}× per CPU second.`,
    '',
    `## Nightly 1 % change over loopback HTTP (\`blockrep serve\`), ${mib(changed)} MiB written`,
    '',
    '| repository | block size | changed blocks | MiB sent by blockrep | × rsync literal | s |',
    '|---|---|---|---|---|---|',
    ...nightly.map((n) => `| ${n.kind === 'plain' ? 'unencrypted (patches, manifest delta)' : 'encrypted (whole sealed chunks and manifest)'} | ${n.blockSize / KiB} KiB | ${n.changedBlocks} | ${mib(n.bytesSent)} | ${(n.bytesSent / rsync.literalBytes).toFixed(2)} | ${n.seconds.toFixed(1)} |`),
    `| rsync \`--no-whole-file\` literal data (sent in all: ${mib(rsync.sentBytes)} MiB) | | | ${mib(rsync.literalBytes)} | 1.00 | ${rsync.seconds.toFixed(1)} |`,
    '',
    'blockrep\'s bytes are its HTTP bodies (`bytesSent`), not TCP/IP headers; rsync\'s literal data likewise excludes its protocol. The network benchmark (bench/network-bench.mjs, root, veth counters) measures the wire itself for unencrypted repositories.',
    '',
  ];
  writeFileSync(join(results, 'crypt.md'), lines.join('\n'));
  log(lines.join('\n'));
  if (!process.argv.includes('--keep')) rmSync(work, { recursive: true, force: true });
}

main().catch((err) => {
  log(err.stack ?? String(err));
  process.exitCode = 1;
});
