#!/usr/bin/env node
/**
 * Benchmark of a nightly backup of a libvirt domain by both methods, run against the compiled
 * dist/ by `npm run bench:libvirt` (as root: it starts virtlogd and libvirtd when they are not
 * running, and stops them again only then, and only when no libvirt test still uses them).
 *
 * Defines the tiny test guest (scripts/build-test-guest.sh) as a `<domain type='qemu'>` (TCG)
 * with two 64 MiB ext4 data disks — vda qcow2 over a raw backing file, vdb raw — and its writer
 * appending records all the time; takes one full backup by each method into a repository of its
 * own (warm-up: backup-api then has its checkpoint), then RUNS incremental backups of each
 * method, alternating (api, snapshot, api, …) so that both see the same machine, each a fresh
 * `blockrep backup --domain … --method M --json`, and reports from their --json reports:
 *   - the frozen window: backup-api `frozenMs` (domfsfreeze sent → domfsthaw returned, around
 *     backup-begin); snapshot `snapshot.snapshotMs` (libvirt's whole quiesced snapshot call, an
 *     upper bound: libvirt does not say how long within it the guest was frozen);
 *   - the whole run (`durationMs`), and what backup-api read of vda through its checkpoint.
 * Medians, with min / p90 / max; the machine's load before and during each run (cores used by
 * processes other than the guest's QEMU, libvirtd and blockrep). Writes
 * bench/results/libvirt.json and bench/results/libvirt.md.
 *
 * Options: --runs N (per method, default 12), --block-size SIZE (default 256K), --quiet-wait
 * SECONDS (default 20: before each run, wait up to this long for other processes to use less
 * than a quarter of a core), --keep (keep bench/work/libvirt).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuSample, machineFacts, otherCores, waitForQuiet } from './lib/machine-load.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const work = join(here, 'work', 'libvirt');
const results = join(here, 'results');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const RUNS = Number(opt('--runs', '12'));
const BLOCK = opt('--block-size', '256K');
const QUIET_WAIT = Number(opt('--quiet-wait', '20'));
const KEEP = args.includes('--keep');
const URI = 'qemu:///system';
const NAME = 'blockrep-bench';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const round = (x) => Number(x.toFixed(2));
const stats = (xs) => ({ median: round(median(xs)), min: Math.min(...xs), p90: pct(xs, 90), max: Math.max(...xs), runs: xs });

const virsh = (a, check = true) => {
  const r = spawnSync('virsh', ['-c', URI, ...a], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  if (check && r.status !== 0) throw new Error(`virsh ${a.join(' ')}: ${r.stderr}`);
  return r;
};
const pidOf = (file) => {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
};

/**
 * The daemons are shared with the libvirt tests (test/libvirt/support/libvirt-guest.ts), which may
 * run at the same time: every user registers under USERS, and the daemons the tests or the
 * bench started are stopped only by the last user to leave.
 */
const USERS = '/run/blockrep-test-libvirtd';
const STARTED = join(USERS, 'started.json');

function ensureLibvirtd() {
  mkdirSync(USERS, { recursive: true });
  writeFileSync(join(USERS, `user-${process.pid}`), '');
  const started = existsSync(STARTED) ? JSON.parse(readFileSync(STARTED, 'utf8')) : [];
  for (const [name, pidFile] of [
    ['virtlogd', '/run/virtlogd.pid'],
    ['libvirtd', '/run/libvirtd.pid'],
  ]) {
    if (pidOf(pidFile) !== undefined) continue;
    execFileSync(name, ['-d']);
    if (!started.some((d) => d.name === name)) started.push({ name, pidFile });
  }
  writeFileSync(STARTED, JSON.stringify(started));
  for (let i = 0; i < 450 && virsh(['version'], false).status !== 0; i++) execFileSync('sleep', ['0.2']);
}

function releaseLibvirtd() {
  rmSync(join(USERS, `user-${process.pid}`), { force: true });
  const alive = (pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (readdirSync(USERS).some((n) => n.startsWith('user-') && alive(Number(n.slice(5))))) return;
  const started = existsSync(STARTED) ? JSON.parse(readFileSync(STARTED, 'utf8')) : [];
  rmSync(STARTED, { force: true });
  for (const d of started.reverse()) {
    const pid = pidOf(d.pidFile);
    if (pid !== undefined) process.kill(pid, 'SIGTERM');
  }
}

function makeExt4(image, label) {
  const tree = `${image}.tree`;
  mkdirSync(join(tree, 'files'), { recursive: true });
  writeFileSync(join(tree, 'id'), `${label}\n`);
  execFileSync('truncate', ['-s', '64M', image]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', label, '-d', tree, image]);
  rmSync(tree, { recursive: true, force: true });
}

function defineDomain(vm) {
  for (const d of [vm, join(vm, 'a'), join(vm, 'b')]) {
    mkdirSync(d, { recursive: true });
    chmodSync(d, 0o755);
  }
  const guest = execFileSync('bash', [join(root, 'scripts/build-test-guest.sh')], { encoding: 'utf8' }).trim();
  copyFileSync(join(guest, 'vmlinuz'), join(vm, 'vmlinuz'));
  copyFileSync(join(guest, 'initrd.img'), join(vm, 'initrd.img'));
  makeExt4(join(vm, 'a/base1.raw'), 'data1');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base1.raw', '-F', 'raw', join(vm, 'a/disk1.qcow2')]);
  makeExt4(join(vm, 'b/disk2.raw'), 'data2');
  const xml = `<domain type='qemu'>
  <name>${NAME}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>${vm}/vmlinuz</kernel><initrd>${vm}/initrd.img</initrd><cmdline>console=ttyS0 panic=-1 quiet loglevel=1</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${vm}/a/disk1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${vm}/b/disk2.raw'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source path='${vm}/serial.log'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`;
  writeFileSync(join(vm, 'domain.xml'), xml);
  virsh(['define', join(vm, 'domain.xml')]);
  virsh(['start', NAME]);
}

async function waitForGuest(vm) {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const log = existsSync(join(vm, 'serial.log')) ? readFileSync(join(vm, 'serial.log'), 'utf8') : '';
    if (/blockrep-writer \d+/.test(log) && virsh(['domfsinfo', NAME], false).status === 0) return;
    await sleep(500);
  }
  throw new Error('the guest did not boot to its agent and writer within 120 s');
}

function backup(repo, method, pids) {
  const a = ['bin/blockrep.js', 'backup', '--domain', NAME, '--connect', URI, '--method', method, '--repo', repo, '--block-size', BLOCK, '--json'];
  const before = cpuSample(pids);
  const r = spawnSync('bash', ['-c', '"$0" "$@"; rc=$?; times >&2; exit $rc', process.execPath, ...a], { cwd: root, encoding: 'utf8' });
  const after = cpuSample(pids);
  let json;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    throw new Error(`blockrep backup failed (exit ${r.status}): ${r.stderr}${r.stdout}`);
  }
  if (r.status !== 0 || !json.ok) throw new Error(`blockrep backup failed (exit ${r.status}): ${r.stdout} ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  const secs = (t) => {
    const m = /^(\d+)m([\d.]+)s$/.exec(t);
    return m ? Number(m[1]) * 60 + Number(m[2]) : 0;
  };
  const [user, sys] = (lines[lines.length - 1] ?? '').split(/\s+/);
  const blockrepCpu = secs(user) + secs(sys);
  // Other processes: the machine's busy time minus QEMU's and libvirtd's and blockrep's own.
  const other = Math.max(0, Number((otherCores(before, after) - blockrepCpu / ((after.at - before.at) / 1000)).toFixed(2)));
  return { report: json, blockrepCpu, other };
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root: the bench starts libvirtd and defines a domain on qemu:///system');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  mkdirSync(results, { recursive: true });
  ensureLibvirtd();
  const vm = join(work, 'vm');
  virsh(['destroy', NAME], false);
  virsh(['undefine', NAME, '--checkpoints-metadata'], false);
  defineDomain(vm);
  const versionText = virsh(['version']).stdout;
  const libvirtVersion = (/Running against daemon:\s*(\S+)/.exec(versionText) ?? /Using library:\s*libvirt\s+(\S+)/.exec(versionText))?.[1] ?? '?';
  const qemuVersion = /Running hypervisor:\s*QEMU\s*(\S+)/.exec(virsh(['version']).stdout)?.[1] ?? '?';
  try {
    await waitForGuest(vm);
    const pids = [pidOf(`/run/libvirt/qemu/${NAME}.pid`), pidOf('/run/libvirtd.pid')].filter((p) => p !== undefined);
    const repos = { 'backup-api': join(work, 'repo-api'), snapshot: join(work, 'repo-snapshot') };
    const warm = {};
    for (const m of ['backup-api', 'snapshot']) {
      warm[m] = backup(repos[m], m, pids).report;
      process.stderr.write(`warm-up ${m}: ${warm[m].durationMs} ms\n`);
    }
    const runs = { 'backup-api': [], snapshot: [] };
    for (let i = 0; i < RUNS; i++) {
      for (const m of ['backup-api', 'snapshot']) {
        await sleep(3000); // the writer writes something to back up
        const quiet = await waitForQuiet(pids, QUIET_WAIT);
        // What one virsh process costs right now (start, connect, one call, exit): part of every bound below.
        const t0 = Date.now();
        virsh(['domstate', NAME]);
        const virshCallMs = Date.now() - t0;
        const { report, blockrepCpu, other } = backup(repos[m], m, pids);
        const frozen = m === 'backup-api' ? report.frozenMs : report.snapshot.snapshotMs;
        const vda = report.disks.find((d) => d.disk.endsWith('/vda'));
        runs[m].push({ frozen, durationMs: report.durationMs, quiesced: report.quiesced, vdaScan: vda.scan, vdaBytesRead: vda.bytesRead, beginMs: report.backupJob?.beginMs, freezeMs: report.backupJob?.freezeMs, virshCallMs, blockrepCpu, loadBefore: quiet, loadDuring: other });
        process.stderr.write(`${m} ${i + 1}/${RUNS}: virsh call ${virshCallMs} ms, frozen ${frozen} ms, total ${report.durationMs} ms, vda ${vda.scan} ${vda.bytesRead} bytes read; other load before ${quiet}, during ${other} cores\n`);
      }
    }
    const sum = (m) => ({
      frozen: stats(runs[m].map((r) => r.frozen)),
      total: stats(runs[m].map((r) => r.durationMs)),
      vdaBytesRead: stats(runs[m].map((r) => r.vdaBytesRead)),
      blockrepCpuSeconds: stats(runs[m].map((r) => Number(r.blockrepCpu.toFixed(2)))),
      virshCallMs: stats(runs[m].map((r) => r.virshCallMs)),
      ...(m === 'backup-api' ? { freezeCallMs: stats(runs[m].map((r) => r.freezeMs)), beginAndThawMs: stats(runs[m].map((r) => r.beginMs)) } : {}),
      loadBefore: stats(runs[m].map((r) => r.loadBefore)),
      loadDuring: stats(runs[m].map((r) => r.loadDuring)),
      allQuiesced: runs[m].every((r) => r.quiesced),
      vdaScans: [...new Set(runs[m].map((r) => r.vdaScan))],
    });
    const out = {
      date: new Date().toISOString(),
      machine: machineFacts(),
      libvirt: libvirtVersion,
      qemu: qemuVersion,
      runsPerMethod: RUNS,
      blockSize: BLOCK,
      warmUp: { 'backup-api': warm['backup-api'].durationMs, snapshot: warm.snapshot.durationMs },
      methods: { 'backup-api': sum('backup-api'), snapshot: sum('snapshot') },
      runs,
    };
    writeFileSync(join(results, 'libvirt.json'), JSON.stringify(out, null, 2) + '\n');
    writeFileSync(join(results, 'libvirt.md'), markdown(out));
    process.stdout.write(markdown(out));
  } finally {
    virsh(['destroy', NAME], false);
    virsh(['undefine', NAME, '--checkpoints-metadata'], false);
    releaseLibvirtd();
    if (!KEEP) rmSync(work, { recursive: true, force: true });
  }
}

function markdown(o) {
  const a = o.methods['backup-api'];
  const s = o.methods.snapshot;
  const row = (what, x, unit = '') => `| ${what} | **${x.median}${unit}** | ${x.min} | ${x.p90} | ${x.max} | ${x.runs.join(' ')} |`;
  const MiB = (x) => ({ ...x, median: (x.median / 1048576).toFixed(2), min: (x.min / 1048576).toFixed(2), p90: (x.p90 / 1048576).toFixed(2), max: (x.max / 1048576).toFixed(2), runs: x.runs.map((b) => (b / 1048576).toFixed(2)) });
  return [
    '# libvirt domain backup benchmark: backup-api and snapshot',
    '',
    `Generated by \`npm run bench:libvirt\` (bench/libvirt-bench.mjs) on ${o.date}.`,
    `Machine: ${o.machine.cpu}, ${o.machine.cores} cores, Node ${o.machine.node}; load average at the end ${o.machine.loadavg.join(' / ')}. libvirt ${o.libvirt}, QEMU ${o.qemu} (TCG, no KVM).`,
    `Domain: the test guest (scripts/build-test-guest.sh), 1 vCPU, 256 MiB, two 64 MiB ext4 data disks (vda: qcow2 over a raw backing file; vdb: raw), a writer appending records to both all the time.`,
    `${o.runsPerMethod} nightly (incremental) backups per method, alternating api/snapshot, each a fresh \`blockrep backup --domain … --method M --block-size ${o.blockSize} --json\` into a repository of its own, after one full backup per method as warm-up (${o.warmUp['backup-api']} / ${o.warmUp.snapshot} ms). Guest quiesced in every run: backup-api ${a.allQuiesced ? 'yes' : 'NO'}, snapshot ${s.allQuiesced ? 'yes' : 'NO'}.`,
    '',
    'Frozen window, both upper bounds: backup-api `frozenMs` = the `domfsfreeze` call started → `backup-begin` and `domfsthaw` (one virsh process) returned; snapshot `snapshot.snapshotMs` = the whole quiesced `snapshot-create-as` call (libvirt freezes and thaws inside it and does not say for how long). Each bound includes the start of virsh processes and their connections to libvirtd (two for backup-api, one for snapshot), during which the guest is not frozen yet: the row "one virsh call" shows what one costs on this machine at the time.',
    '',
    '| measurement (ms unless said) | median | min | p90 | max | runs |',
    '|---|---|---|---|---|---|',
    row('backup-api: frozen window', a.frozen),
    row('snapshot: frozen window (upper bound: the snapshot call)', s.frozen),
    row('backup-api: of which the domfsfreeze call', a.freezeCallMs),
    row('backup-api: of which backup-begin + domfsthaw (one virsh process)', a.beginAndThawMs),
    row('one virsh call on this machine (domstate, timed before each run)', stats([...a.virshCallMs.runs, ...s.virshCallMs.runs])),
    row('backup-api: whole run (durationMs)', a.total),
    row('snapshot: whole run (durationMs)', s.total),
    row('backup-api: vda read through its checkpoint (MiB)', MiB(a.vdaBytesRead)),
    row('snapshot: vda read (MiB; every block is hashed, unallocated ranges skipped)', MiB(s.vdaBytesRead)),
    row('backup-api: blockrep CPU (s)', a.blockrepCpuSeconds),
    row('snapshot: blockrep CPU (s)', s.blockrepCpuSeconds),
    '',
    `vda scans of backup-api: ${a.vdaScans.join(', ')}. Machine load (cores used by processes other than the guest's QEMU, libvirtd and blockrep; the bench waited up to ${QUIET_WAIT} s for < 0.25 before each run): before the runs median ${a.loadBefore.median} / ${s.loadBefore.median} (max ${Math.max(a.loadBefore.max, s.loadBefore.max)}), during them median ${a.loadDuring.median} / ${s.loadDuring.median} (max ${Math.max(a.loadDuring.max, s.loadDuring.max)}) for backup-api / snapshot. This machine is shared; under TCG the guest runs only as fast as QEMU gets CPU.`,
    '',
  ].join('\n');
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exitCode = 1;
});
