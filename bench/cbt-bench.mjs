// Changed-block tracking on a live VM: a QEMU (paused, -S, TCG) with one qcow2 disk filled with
// data; between runs 1 % of the disk is written through QEMU's block layer (HMP qemu-io), so the
// bitmaps see it. Each round: a bitmap-driven live backup, then a --full-scan live backup of the
// same state. Reports bytes read vs the dirty data rounded to blocks, and the wall-time ratio.
// Usage: npm run bench:cbt [-- --size 16G --rounds 3]
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { pathToFileURL } from 'node:url';
import { median, parseSizeArg, sh, startPausedQemu } from './lib/paused-qemu.mjs';
import { GiB, KiB, MiB, arg, blockrep, makeImage, repoRoot, rng } from './lib/workload.mjs';

// Loaded at run time from the build (npm run bench:cbt builds it first).
const { QmpClient } = await import(pathToFileURL(join(repoRoot, 'dist/hypervisor/qmp-client.js')).href);

const size = parseSizeArg(arg('--size', '16G'));
const rounds = Number(arg('--rounds', '3'));
const blockSize = 256 * KiB;
const dir = mkdtempSync(join(tmpdir(), 'blockrep-cbt-bench-'));
const raw = join(dir, 'fill.raw');
const disk = join(dir, 'disk.qcow2');
const repo = join(dir, 'repo');
// The full-scan runs go into a second repository with the same history, so that both runs of a
// round find and store the same change (the same work but for how the blocks are found).
const fullRepo = join(dir, 'repo-full');


let t = Date.now();
makeImage(raw, size);
sh('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, disk]);
rmSync(raw);
const fillSeconds = (Date.now() - t) / 1000;
const vm = startPausedQemu({ dir, disk, name: 'benchvm' });
const qmpSocket = vm.qmpSocket;
const backup = (extra = [], into = repo) => blockrep(['backup', '--qmp', qmpSocket, '--repo', into, '--no-quiesce', '--block-size', '256K', ...extra]);

/** 1 % of the disk: half scattered 4–64 KiB writes, half 1–8 MiB extents. Returns the dirty blocks. */
async function writeOnePercent(seed) {
  const r = rng(seed);
  const blocks = new Set();
  const qmp = await QmpClient.connect(qmpSocket);
  let written = 0;
  try {
    while (written < size / 100) {
      const big = written >= size / 200;
      const len = big ? Math.round(1 + r() * 7) * MiB : Math.round(4 + r() * 60) * KiB;
      const off = Math.floor((r() * (size - len)) / 4096) * 4096;
      await qmp.execute('human-monitor-command', { 'command-line': `qemu-io d0 "write -P 0x${(1 + Math.floor(r() * 254)).toString(16)} ${off} ${len}"` }, z.string());
      for (let b = Math.floor(off / blockSize); b < Math.ceil((off + len) / blockSize); b++) blocks.add(b);
      written += len;
    }
  } finally {
    await qmp.close();
  }
  return { written, dirtyBytes: blocks.size * blockSize };
}

const rows = [];
try {
  const first = backup();
  backup([], fullRepo);
  for (let i = 0; i < rounds; i++) {
    const w = await writeOnePercent(1000 + i);
    const tracked = backup();
    const full = backup(['--full-scan'], fullRepo);
    const d = tracked.report.disks[0];
    const f = full.report.disks[0];
    if (d.scan !== 'bitmap' || f.scan !== 'full' || f.changedBlocks !== d.changedBlocks) throw new Error(`round ${i}: scan ${d.scan} (${d.scanReason}) found ${d.changedBlocks} changed, the full scan ${f.changedBlocks}`);
    rows.push({ written: w.written, dirtyBytes: w.dirtyBytes, bitmapSeconds: tracked.seconds, bitmapBytesRead: d.bytesRead, sampledBlocks: d.sampledBlocks, changedBlocks: d.changedBlocks, fullSeconds: full.seconds, fullBytesRead: f.bytesRead });
  }
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, loadavg: loadavg() },
    diskBytes: size,
    blockSize,
    fillSeconds,
    firstBackupSeconds: first.seconds,
    rounds: rows,
    median: {
      readRatio: median(rows.map((r) => r.bitmapBytesRead / r.dirtyBytes)),
      timeRatio: median(rows.map((r) => r.bitmapSeconds / r.fullSeconds)),
      bitmapSeconds: median(rows.map((r) => r.bitmapSeconds)),
      fullSeconds: median(rows.map((r) => r.fullSeconds)),
    },
  };
  mkdirSync(join(repoRoot, 'bench/results'), { recursive: true });
  writeFileSync(join(repoRoot, 'bench/results/cbt.json'), JSON.stringify(result, null, 2) + '\n');
  const gib = (n) => (n / GiB).toFixed(2);
  const md = [
    '# Changed-block tracking (QMP live path)',
    '',
    `${result.date}; ${result.machine.cpus} cores, load average ${result.machine.loadavg.map((x) => x.toFixed(2)).join(' ')} at the end (shared machine).`,
    `A paused QEMU (TCG) with one ${gib(size)} GiB qcow2 disk filled with data (60 % random, 20 % text, 20 % zeros); 1 % written between runs through QEMU's block layer (HMP qemu-io); 256 KiB blocks. Each round: a bitmap-driven live backup, then a \`--full-scan\` live backup of the same state into a second repository with the same history (both find and store the same change; the bench fails if they find different changed blocks). Rerun: \`npm run bench:cbt -- --size 16G --rounds 3\`.`,
    '',
    '| round | written | dirty, rounded to blocks | bitmap run: read | read ÷ dirty | bitmap run | full-scan run | time ratio |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r, i) => `| ${i + 1} | ${(r.written / MiB).toFixed(0)} MiB | ${(r.dirtyBytes / MiB).toFixed(0)} MiB | ${(r.bitmapBytesRead / MiB).toFixed(0)} MiB (${r.sampledBlocks} sampled blocks) | ${(r.bitmapBytesRead / r.dirtyBytes).toFixed(2)}× | ${r.bitmapSeconds.toFixed(1)} s | ${r.fullSeconds.toFixed(1)} s | ${(r.bitmapSeconds / r.fullSeconds).toFixed(3)} |`),
    '',
    `Median: bytes read ${result.median.readRatio.toFixed(2)}× the dirty data rounded to blocks (target ≤ 1.2×); wall time ${result.median.timeRatio.toFixed(3)}× the full-scan run (target ≤ 0.1×).`,
    '',
  ].join('\n');
  writeFileSync(join(repoRoot, 'bench/results/cbt.md'), md);
  console.log(md);
} finally {
  await vm.stop();
  rmSync(dir, { recursive: true, force: true });
}
