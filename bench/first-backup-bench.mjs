/**
 * First full backup against copying the file: how close does blockrep come to `cp` + `sync`?
 *
 * Builds a 4 GiB raw image of random bytes under bench/work/ (nothing to compress, nothing to
 * skip: every block becomes a chunk), then, in each round, on the same file system:
 *
 *   cp + sync       `cp IMAGE bench/work/…` then `sync`: the floor, the same bytes made durable
 *   local           `blockrep backup IMAGE --repo DIR` into a new, empty folder
 *   local, file     the same with `--sync-level file` (an fsync per chunk: blockrep before
 *                   issue 16), with --file-level
 *   serve           the same into a `blockrep serve` on loopback (a new, empty root)
 *
 * Each measurement starts with everything synced, the image re-read into the page cache (this
 * machine reclaims cold page cache: see scan-notes.md) and, up to --quiet-wait seconds, the
 * machine otherwise idle. Wall times; CPU and peak RSS of blockrep (and of the server) from
 * /usr/bin/time and /proc; "other load" is the CPU the rest of this shared machine used during
 * the run, in cores. Writes bench/results/first-backup.json and first-backup.md.
 *
 * Options: --size BYTES (default 4 GiB), --reps N (3), --block-size SIZE (CLI default),
 * --sync-level filesystem|file (blockrep's default), --file-level (also measure the local backup
 * at sync level file, in the same rounds), --only local|serve, --out NAME (the
 * result file's name, default first-backup), --quiet-wait SECONDS (60), --keep (keep the image).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';
import { arg, GiB, MiB, repoRoot } from './lib/workload.mjs';

const work = join(repoRoot, 'bench', 'work');
const results = join(repoRoot, 'bench', 'results');
const cli = join(repoRoot, 'bin', 'blockrep.js');
const USER_HZ = 100;

const size = Number(arg('--size', String(4 * GiB)));
const reps = Number(arg('--reps', '3'));
const blockSize = arg('--block-size', undefined);
const syncLevel = arg('--sync-level', undefined);
const only = arg('--only', undefined);
const outName = arg('--out', 'first-backup');
const quietWaitSeconds = Number(arg('--quiet-wait', '60'));
const keep = process.argv.includes('--keep');
const fileLevel = process.argv.includes('--file-level');

const log = (line) => process.stderr.write(`${line}\n`);
const round = (x, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Busy and total CPU time of the machine so far, from /proc/stat (USER_HZ ticks). */
function cpuTicks() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: fields.reduce((a, b) => a + b, 0) - idle };
}

/** Waits, up to `maxSeconds`, until other processes use less than a quarter of a core over 2 s. */
function waitForQuiet(maxSeconds) {
  const deadline = Date.now() + maxSeconds * 1000;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  do {
    const before = cpuTicks();
    Atomics.wait(pause, 0, 0, 2000);
    if ((cpuTicks().busy - before.busy) / USER_HZ / 2 < 0.25) return;
  } while (Date.now() < deadline);
}

function sh(cmd, args, quiet = false) {
  const r = spawnSync(cmd, args, { stdio: quiet ? ['ignore', 'ignore', 'inherit'] : 'inherit' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}`);
}

function makeRandomImage(path) {
  if (existsSync(path) && statSync(path).size === size) return false;
  const fd = openSync(path, 'w');
  const buf = Buffer.alloc(8 * MiB);
  for (let off = 0; off < size; off += buf.length) {
    randomFillSync(buf);
    writeSync(fd, buf, 0, Math.min(buf.length, size - off), off);
  }
  closeSync(fd);
  return true;
}

/**
 * Runs argv under /usr/bin/time: wall seconds, CPU seconds and peak RSS of the process (and its
 * threads), and the cores the rest of the machine used meanwhile (`extraCpu()` adds CPU of a
 * process outside the measured one, the server, so it is not counted as others' load).
 * @param {string[]} argv
 * @param {{ env?: NodeJS.ProcessEnv, extraCpu?: () => number }} [options]
 */
function timed(argv, { env, extraCpu } = {}) {
  const before = cpuTicks();
  const extraBefore = extraCpu?.() ?? 0;
  const t = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', 'TIME %e %U %S %M', ...argv], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 26 });
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stdout}${r.stderr}`);
  const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/.exec(r.stderr);
  const cpuSeconds = m ? Number(m[2]) + Number(m[3]) : NaN;
  const extra = (extraCpu?.() ?? 0) - extraBefore;
  const busy = (cpuTicks().busy - before.busy) / USER_HZ;
  return {
    seconds: round(seconds, 3),
    cpuSeconds: round(cpuSeconds, 2),
    serverCpuSeconds: extraCpu ? round(extra, 2) : undefined,
    maxRssMiB: m ? round(Number(m[4]) / 1024, 1) : undefined,
    otherCores: round(Math.max(0, busy - cpuSeconds - extra) / seconds, 2),
    stdout: r.stdout,
  };
}

/** CPU seconds of a process so far, from /proc/PID/stat (utime + stime). */
function procCpu(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / USER_HZ;
  } catch {
    return 0;
  }
}
function procPeakRssMiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? round(Number(m[1]) / 1024, 1) : undefined;
  } catch {
    return undefined;
  }
}

function startServer(root) {
  const proc = spawn(process.execPath, [cli, 'serve', '--root', root, '--listen', '127.0.0.1:0', ...(syncLevel ? ['--sync-level', syncLevel] : [])], { stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve({ proc, url: m[1] });
    });
    proc.on('exit', (code) => reject(new Error(`blockrep serve exited ${code}`)));
  });
}

function backupArgs(repo, level = syncLevel) {
  return [process.execPath, cli, 'backup', image, '--repo', repo, '--disk', 'bench', '--json', ...(blockSize ? ['--block-size', blockSize] : []), ...(level && !repo.startsWith('http') ? ['--sync-level', level] : [])];
}

const image = join(work, `first-backup-${size}.raw`);

async function main() {
  mkdirSync(work, { recursive: true });
  log(`image: ${(size / GiB).toFixed(2)} GiB of random bytes under ${work}`);
  if (makeRandomImage(image)) log('  written');
  const copy = join(work, 'first-backup-copy.raw');
  const localRepo = join(work, 'first-backup-repo');
  const serveRoot = join(work, 'first-backup-serve');
  const clean = () => {
    for (const p of [copy, localRepo, serveRoot]) rmSync(p, { recursive: true, force: true });
    sh('sync', []);
  };
  const prepare = () => {
    clean();
    sh('cat', [image], true); // back into the page cache
    waitForQuiet(quietWaitSeconds);
  };

  const samples = { cp: [], local: [], localFile: [], serve: [] };
  for (let rep = 1; rep <= reps; rep++) {
    log(`round ${rep}/${reps} (load ${loadavg()[0].toFixed(2)})`);
    prepare();
    const cp = timed(['sh', '-c', 'cp "$0" "$1" && sync', image, copy]);
    samples.cp.push(cp);
    log(`  cp + sync      ${cp.seconds.toFixed(2)} s  others ${cp.otherCores} cores`);
    if (only !== 'serve') {
      prepare();
      const s = timed(backupArgs(localRepo));
      const report = JSON.parse(s.stdout);
      // What a later sync still finds to write: the backup's own data should all be on disk.
      const t = process.hrtime.bigint();
      sh('sync', []);
      const syncAfter = Number(process.hrtime.bigint() - t) / 1e9;
      samples.local.push({ ...s, stdout: undefined, syncAfterSeconds: round(syncAfter, 3), chunks: report.disks?.[0]?.changedBlocks, storedBytes: report.disks?.[0]?.bytesSent });
      log(`  local          ${s.seconds.toFixed(2)} s  cpu ${s.cpuSeconds} s  rss ${s.maxRssMiB} MiB  others ${s.otherCores} cores  (sync after: ${syncAfter.toFixed(2)} s)  ratio ${round(cp.seconds / s.seconds)}`);
    }
    if (only !== 'serve' && fileLevel) {
      prepare();
      const s = timed(backupArgs(localRepo, 'file'));
      samples.localFile.push({ ...s, stdout: undefined });
      log(`  local, file    ${s.seconds.toFixed(2)} s  cpu ${s.cpuSeconds} s  rss ${s.maxRssMiB} MiB  others ${s.otherCores} cores  ratio ${round(cp.seconds / s.seconds)}`);
    }
    if (only !== 'local') {
      prepare();
      mkdirSync(serveRoot, { recursive: true });
      const server = await startServer(serveRoot);
      try {
        const s = timed(backupArgs(server.url), { extraCpu: () => procCpu(server.proc.pid) });
        const serverRss = procPeakRssMiB(server.proc.pid);
        samples.serve.push({ ...s, stdout: undefined, serverMaxRssMiB: serverRss });
        log(`  serve          ${s.seconds.toFixed(2)} s  cpu ${s.cpuSeconds} + server ${s.serverCpuSeconds} s  rss ${s.maxRssMiB} / server ${serverRss} MiB  others ${s.otherCores} cores  ratio ${round(cp.seconds / s.seconds)}`);
      } finally {
        server.proc.kill('SIGTERM');
        await new Promise((r) => server.proc.once('exit', r));
      }
    }
  }
  clean();
  if (!keep) rmSync(image, { force: true });

  const cpMedian = median(samples.cp.map((s) => s.seconds));
  const summary = (list, target) =>
    list.length === 0
      ? undefined
      : {
          medianSeconds: round(median(list.map((s) => s.seconds)), 3),
          ratioToCp: round(cpMedian / median(list.map((s) => s.seconds))),
          // Per round: cp + sync and the backup ran minutes apart at most, under similar load.
          ratiosPerRound: list.map((s, i) => round(samples.cp[i].seconds / s.seconds)),
          target,
          peakRssMiB: Math.max(...list.map((s) => s.maxRssMiB ?? 0)),
        };
  const result = {
    bench: 'first-backup',
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, node: process.version, kernel: release(), loadAvgAtEnd: loadavg().map((x) => round(x, 2)) },
    imageBytes: size,
    blockSize: blockSize ?? 'CLI default (256K)',
    syncLevel: syncLevel ?? 'default',
    reps,
    quietWaitSeconds,
    cpSyncMedianSeconds: round(cpMedian, 3),
    local: summary(samples.local, 0.7),
    localFileLevel: summary(samples.localFile, 0.7),
    serve: summary(samples.serve, 0.6),
    samples,
  };
  mkdirSync(results, { recursive: true });
  writeFileSync(join(results, `${outName}.json`), `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(join(results, `${outName}.md`), markdown(result));
  log(`wrote bench/results/${outName}.md`);
}

function markdown(r) {
  const rows = [];
  const line = (what, list, extra) =>
    list.forEach((s, i) =>
      rows.push(`| ${i + 1} | ${what} | ${s.seconds.toFixed(2)} | ${s.cpuSeconds ?? ''}${s.serverCpuSeconds !== undefined ? ` + ${s.serverCpuSeconds} (server)` : ''} | ${s.maxRssMiB ?? ''}${s.serverMaxRssMiB !== undefined ? ` / ${s.serverMaxRssMiB} (server)` : ''} | ${s.otherCores} | ${extra(s, i)} |`),
    );
  line('cp + sync', r.samples.cp, () => '');
  line('blockrep, local folder', r.samples.local, (s, i) => `${(r.samples.cp[i].seconds / s.seconds).toFixed(2)}× cp (sync after: ${s.syncAfterSeconds} s)`);
  line('blockrep, local folder, --sync-level file', r.samples.localFile, (s, i) => `${(r.samples.cp[i].seconds / s.seconds).toFixed(2)}× cp`);
  line('blockrep, serve on loopback', r.samples.serve, (s, i) => `${(r.samples.cp[i].seconds / s.seconds).toFixed(2)}× cp`);
  const verdict = (s) => (s === undefined ? 'not measured' : `${s.medianSeconds} s, **${s.ratioToCp.toFixed(2)}×** cp + sync (target ≥ ${s.target}: ${s.ratioToCp >= s.target ? 'met' : 'not met'}), peak RSS ${s.peakRssMiB} MiB`);
  return [
    '# First full backup against cp + sync',
    '',
    `\`npm run bench:first\` (bench/first-backup-bench.mjs), ${r.date}. ${(r.imageBytes / GiB).toFixed(2)} GiB raw image of random bytes,`,
    `block size ${r.blockSize}, sync level ${r.syncLevel}; ${r.machine.cores} × ${r.machine.cpu}, Node ${r.machine.node}, kernel ${r.machine.kernel}.`,
    'Image, copy and repositories on the same file system; each measurement starts synced, with the image in the page cache,',
    `after waiting (up to ${r.quietWaitSeconds} s) for the shared machine to be otherwise idle. Ratio: cp + sync's time over blockrep's (higher is better).`,
    '',
    `- cp + sync: median ${r.cpSyncMedianSeconds} s`,
    `- into a local folder: ${verdict(r.local)}`,
    ...(r.localFileLevel ? [`- the same at \`--sync-level file\` (an fsync per chunk, as before issue 16): ${verdict(r.localFileLevel)}`] : []),
    `- into \`blockrep serve\` on loopback: ${verdict(r.serve)}`,
    '',
    '| round | what | wall s | CPU s | peak RSS MiB | other load, cores | |',
    '|---|---|---|---|---|---|---|',
    ...rows,
    '',
    '"CPU s" is user + system time of blockrep (and of the server); "other load" is what the rest of the machine used during the run, in cores.',
    '"sync after" is how long a `sync` right after the backup took: what the backup left unwritten.',
    '',
  ].join('\n');
}

await main();
