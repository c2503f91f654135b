// Changed-block tracking at scale: a paused QEMU (TCG) with one 1 TiB thin qcow2 disk. A first
// live backup, then ROUNDS nights of 1 GiB of random data written through QEMU's block layer
// (HMP qemu-io, 64 writes of 16 MiB from random source files, so the bitmaps see them and no two
// writes deduplicate), each followed by a nightly live backup. Reports the nightly run's wall time
// (target ≤ 60 s) and the repository's growth against the changed data (target ≤ 1.5×), and how
// much of that growth is the manifest (40 bytes per block of the disk, written every night).
// Usage: npm run bench:cbt-thin [-- --size 1T --change 1G --rounds 3]
import { randomFillSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { median, parseSizeArg, sh, startPausedQemu } from './lib/paused-qemu.mjs';
import { GiB, KiB, MiB, arg, blockrep, repoRoot } from './lib/workload.mjs';

// Loaded at run time from the build (npm run bench:cbt-thin builds it first).
const { QmpClient } = await import(pathToFileURL(join(repoRoot, 'dist/hypervisor/qmp-client.js')).href);

const TiB = 1024 * GiB;
const size = parseSizeArg(arg('--size', '1T'));
const change = parseSizeArg(arg('--change', '1G'));
const rounds = Number(arg('--rounds', '3'));
const WRITE = 16 * MiB;
const dir = mkdtempSync(join(tmpdir(), 'blockrep-cbt-thin-'));
const disk = join(dir, 'disk.qcow2');
const repo = join(dir, 'repo');

function bytesUnder(path) {
  let n = 0;
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    n += e.isDirectory() ? bytesUnder(p) : statSync(p).size;
  }
  return n;
}

/** `change` bytes of fresh random data in 16 MiB writes spread evenly over the disk. */
async function writeChange(round) {
  const writes = Math.max(1, Math.round(change / WRITE));
  const source = join(dir, 'source');
  const buf = Buffer.alloc(WRITE);
  const qmp = await QmpClient.connect(qmpSocket);
  try {
    for (let i = 0; i < writes; i++) {
      writeFileSync(source, randomFillSync(buf));
      const stride = Math.floor(size / writes / WRITE) * WRITE;
      const off = i * stride + ((round * 7 + 1) % Math.max(1, stride / WRITE - 1)) * WRITE;
      await qmp.execute('human-monitor-command', { 'command-line': `qemu-io d0 "write -s ${source} ${off} ${WRITE}"` }, z.string());
    }
  } finally {
    await qmp.close();
    rmSync(source, { force: true });
  }
  return writes * WRITE;
}

sh('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(size)]);
const vm = startPausedQemu({ dir, disk, name: 'thinvm' });
const qmpSocket = vm.qmpSocket;
const backup = () => blockrep(['backup', '--qmp', qmpSocket, '--repo', repo, '--no-quiesce', '--block-size', '256K']);

const rows = [];
try {
  const first = backup();
  for (let i = 0; i < rounds; i++) {
    const written = await writeChange(i);
    const before = bytesUnder(repo);
    const nightly = backup();
    const growth = bytesUnder(repo) - before;
    const d = nightly.report.disks[0];
    if (d.scan !== 'bitmap') throw new Error(`round ${i}: scan ${d.scan} (${d.scanReason})`);
    const manifestBytes = Math.ceil(size / (256 * KiB)) * 40;
    rows.push({ written, seconds: nightly.seconds, bytesRead: d.bytesRead, changedBlocks: d.changedBlocks, sampledBlocks: d.sampledBlocks, growth, manifestBytes });
  }
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, loadavg: loadavg() },
    diskBytes: size,
    firstBackupSeconds: first.seconds,
    rounds: rows,
    median: { seconds: median(rows.map((r) => r.seconds)), growthRatio: median(rows.map((r) => r.growth / r.written)) },
  };
  mkdirSync(join(repoRoot, 'bench/results'), { recursive: true });
  writeFileSync(join(repoRoot, 'bench/results/cbt-thin.json'), JSON.stringify(result, null, 2) + '\n');
  const md = [
    '# Changed-block tracking on a 1 TiB thin disk (QMP live path)',
    '',
    `${result.date}; ${result.machine.cpus} cores, load average ${result.machine.loadavg.map((x) => x.toFixed(2)).join(' ')} at the end (shared machine).`,
    `A paused QEMU (TCG) with one ${(size / TiB).toFixed(2)} TiB thin qcow2 disk; between nightly runs ${(change / GiB).toFixed(2)} GiB of random data written through QEMU's block layer (HMP qemu-io, 16 MiB writes spread over the disk); 256 KiB blocks; a local repository. First live backup of the empty disk: ${first.seconds.toFixed(1)} s. Rerun: \`npm run bench:cbt-thin\`.`,
    '',
    '| night | written | nightly run | read | repository growth | growth ÷ written | of which the manifest |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r, i) => `| ${i + 1} | ${(r.written / MiB).toFixed(0)} MiB | ${r.seconds.toFixed(1)} s | ${(r.bytesRead / MiB).toFixed(0)} MiB (${r.sampledBlocks} sampled blocks) | ${(r.growth / MiB).toFixed(0)} MiB | ${(r.growth / r.written).toFixed(2)}× | ${(r.manifestBytes / MiB).toFixed(0)} MiB |`),
    '',
    `Median: nightly run ${result.median.seconds.toFixed(1)} s (target ≤ 60 s); repository growth ${result.median.growthRatio.toFixed(2)}× the changed data (target ≤ 1.5×).`,
    '',
  ].join('\n');
  writeFileSync(join(repoRoot, 'bench/results/cbt-thin.md'), md);
  console.log(md);
} finally {
  await vm.stop();
  rmSync(dir, { recursive: true, force: true });
}
