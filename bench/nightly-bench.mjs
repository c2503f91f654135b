#!/usr/bin/env node
/**
 * Thirty nights of a production job: one disk image (4 GiB by default), 1 % of it changed each
 * night (scattered 4–64 KiB writes plus 1–8 MiB extents, as issue 3's benchmark defines the
 * change), backed up each night through `blockrep run --config` into a local repository, the
 * config's retention applied after every run (prune), `blockrep gc` once a week. Reports per
 * night the run time, bytes sent and the repository's size, and at the end the repository
 * against the data the nights changed. The reference in the same run: `rsync --no-whole-file
 * --inplace` of the same change onto a mirror copy (its literal data is what a block-diff tool
 * must move; the mirror keeps no versions).
 *
 * All the nights run within minutes, so calendar rules (keepDaily…) would see one day: the
 * retention is `keepLast: N` (default 10, about what keepDaily 7 + keepWeekly 4 keep after 30
 * nights). gc runs with `--grace 0` (nothing else writes the repository during the bench).
 *
 * `npm run bench:nightly` (options: --size BYTES, --nights N, --keep-last N, --no-rsync).
 * Writes bench/results/nightly.json and nightly.md.
 */
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GiB, arg, blockrep, changeImage, diskUsage, makeImage, rsyncLiteral } from './lib/workload.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const work = join(here, 'work', 'nightly');
const results = join(here, 'results');
const size = Number(arg('--size', String(4 * GiB)));
const nights = Number(arg('--nights', '30'));
const keepLast = Number(arg('--keep-last', '10'));
const withRsync = !process.argv.includes('--no-rsync');

rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
mkdirSync(results, { recursive: true });
const image = join(work, 'disk.img');
const mirror = join(work, 'rsync-mirror.img');
const repo = join(work, 'repo');
const config = join(work, 'blockrep.yaml');
writeFileSync(
  config,
  ['repository:', '  url: ./repo', 'defaults:', `  retention: {keepLast: ${keepLast}}`, 'vms:', '  - name: bench', '    images:', '      - path: ./disk.img', '        disk: disk', ''].join('\n'),
);

makeImage(image, size);
if (withRsync) copyFileSync(image, mirror);

const rows = [];
const runNight = (night, changedBytes) => {
  const run = blockrep(['run', '--config', config]);
  const vm = run.report.vms[0];
  if (run.report.summary.failed !== 0 || vm.status !== 'ok') throw new Error(`night ${night} failed: ${JSON.stringify(vm)}`);
  const disk = vm.disks[0];
  const removed = vm.retention?.report?.versionsRemoved ?? 0;
  let gc;
  if (night > 0 && night % 7 === 0) gc = blockrep(['gc', '--repo', repo, '--grace', '0']);
  const rs = withRsync && night > 0 ? rsyncLiteral(image, mirror) : undefined;
  const usage = diskUsage(repo);
  const row = {
    night,
    changedBytes,
    runSeconds: run.seconds,
    changedBlocks: disk.changedBlocks,
    bytesSent: disk.bytesSent,
    versionsRemoved: removed,
    gcSeconds: gc?.seconds,
    gcBytesRemoved: gc?.report.bytesRemoved,
    repoBytes: usage.apparentBytes,
    repoAllocatedBytes: usage.allocatedBytes,
    rsyncSeconds: rs?.seconds,
    rsyncLiteralBytes: rs?.literalBytes,
    rsyncWireBytes: rs ? rs.sentBytes + rs.receivedBytes : undefined,
  };
  rows.push(row);
  process.stderr.write(`night ${night}: ${row.runSeconds.toFixed(1)} s, ${(row.bytesSent / 1e6).toFixed(1)} MB sent, repository ${(row.repoBytes / 1e6).toFixed(0)} MB${gc ? `, gc freed ${(gc.report.bytesRemoved / 1e6).toFixed(1)} MB` : ''}\n`);
};

runNight(0, 0); // the first, full backup
for (let night = 1; night <= nights; night++) runNight(night, changeImage(image, size, 1000 + night));

const first = rows[0];
const nightly = rows.slice(1);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const last = rows[rows.length - 1];
const changedTotal = sum(nightly.map((r) => r.changedBytes));
const sentTotal = sum(nightly.map((r) => r.bytesSent));
const rsyncLiteralTotal = withRsync ? sum(nightly.map((r) => r.rsyncLiteralBytes)) : undefined;
const summary = {
  imageBytes: size,
  nights,
  keepLast,
  firstRunSeconds: first.runSeconds,
  firstRepoBytes: first.repoBytes,
  finalRepoBytes: last.repoBytes,
  finalRepoAllocatedBytes: last.repoAllocatedBytes,
  changedBytesTotal: changedTotal,
  // A changed 4 KiB inside a 256 KiB block costs the whole block: the block-size trade-off.
  medianSentOverChanged: median(nightly.map((r) => r.bytesSent / r.changedBytes)),
  repoOverChangedTotalPlusFirst: last.repoBytes / (first.repoBytes + changedTotal),
  medianNightSeconds: median(nightly.map((r) => r.runSeconds)),
  maxNightSeconds: Math.max(...nightly.map((r) => r.runSeconds)),
  sentBytesTotal: sentTotal,
  rsyncLiteralBytesTotal: rsyncLiteralTotal,
  sentOverRsyncLiteral: rsyncLiteralTotal ? sentTotal / rsyncLiteralTotal : undefined,
  medianRsyncSeconds: withRsync ? median(nightly.map((r) => r.rsyncSeconds)) : undefined,
};
const result = { date: new Date().toISOString(), cpus: cpus().length, summary, rows };
writeFileSync(join(results, 'nightly.json'), `${JSON.stringify(result, null, 2)}\n`);

const mb = (n) => (n === undefined ? '–' : (n / 1e6).toFixed(1));
const s = (n) => (n === undefined ? '–' : n.toFixed(1));
const md = [
  `# ${nights} nights of \`blockrep run\`: repository size and time per night`,
  '',
  `Generated by \`npm run bench:nightly\` (bench/nightly-bench.mjs) on ${result.date}, ${result.cpus} cores.`,
  `Image: ${mb(size)} MB raw (60 % random, 20 % text, 20 % zeros), local repository. Each night 1 % of the image changes (half scattered 4–64 KiB writes, half 1–8 MiB extents), then \`blockrep run --config\` backs it up and applies the retention \`keepLast: ${keepLast}\`; \`blockrep gc --grace 0\` runs every 7th night.`,
  withRsync ? 'Reference in the same run: `rsync --no-whole-file --inplace --ignore-times` of the same change onto a mirror copy (no versions).' : 'rsync reference skipped (--no-rsync).',
  '',
  '## Summary',
  '',
  '| figure | value |',
  '|---|---|',
  `| first (full) run | ${s(first.runSeconds)} s, repository ${mb(first.repoBytes)} MB |`,
  `| nightly run time, median (max) | ${s(summary.medianNightSeconds)} s (${s(summary.maxNightSeconds)} s)${withRsync ? `; rsync of the same change, median ${s(summary.medianRsyncSeconds)} s` : ''} |`,
  `| data changed over ${nights} nights | ${mb(changedTotal)} MB |`,
  `| repository after ${nights} nights | ${mb(last.repoBytes)} MB (${mb(last.repoAllocatedBytes)} MB allocated) |`,
  `| stored per night / changed per night, median | **${summary.medianSentOverChanged.toFixed(2)}** (whole blocks are stored for changes smaller than a block) |`,
  `| repository / (first run + all changes; pruned versions' chunks freed by gc) | **${summary.repoOverChangedTotalPlusFirst.toFixed(2)}** |`,
  withRsync ? `| sent over ${nights} nights / rsync literal data | ${mb(sentTotal)} MB / ${mb(rsyncLiteralTotal)} MB = **${summary.sentOverRsyncLiteral.toFixed(2)}** |` : `| sent over ${nights} nights | ${mb(sentTotal)} MB |`,
  '',
  '## Per night',
  '',
  '| night | changed MB | run s | changed blocks | sent MB | versions pruned | gc freed MB | repository MB | rsync s | rsync literal MB |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.night} | ${mb(r.changedBytes)} | ${s(r.runSeconds)} | ${r.changedBlocks} | ${mb(r.bytesSent)} | ${r.versionsRemoved} | ${mb(r.gcBytesRemoved)} | ${mb(r.repoBytes)} | ${s(r.rsyncSeconds)} | ${mb(r.rsyncLiteralBytes)} |`),
  '',
].join('\n');
writeFileSync(join(results, 'nightly.md'), md);
process.stdout.write(md);
if (!process.argv.includes('--keep')) rmSync(work, { recursive: true, force: true });
