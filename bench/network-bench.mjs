#!/usr/bin/env node
/**
 * Network benchmark (issue #3): a nightly backup of a 4 GiB image with 1 % changed, sent by
 * blockrep to a `blockrep serve` that holds the previous version, against
 * `rsync --no-whole-file --inplace` to an rsync daemon that holds the previous copy, on the
 * same data in the same run, over
 *   - "loopback": two network namespaces joined by an unshaped veth pair, and
 *   - "wan": the same veth shaped to 50 Mbit/s each way and 40 ms RTT.
 * Every byte both tools exchange crosses the veth, whose counters (/sys/class/net/<veth>/
 * statistics/{rx,tx}_bytes, both directions, Ethernet/IP/TCP headers included; segmentation
 * offloads are off so every counted frame is one wire frame) are read before and after each run.
 *
 * `npm run bench:network` (as root: it makes namespaces, veth, tc qdiscs and TUN devices, and
 * installs iproute2, ethtool, rsync, gcc and time when missing). Options: --size BYTES (4 GiB),
 * --reps N (3), --budget-min M (14: no further repetition starts when it would end later),
 * --block-size SIZE (blockrep's default unless given), --check (also restore the last blockrep
 * version and compare it with the image), --keep (keep bench/work/network).
 * Writes bench/results/network.json and network.md.
 *
 * Kernel note: this machine's kernel has no sch_netem (nor sch_fq), so the WAN link is built
 * from what it has: `tbf rate 50mbit` on the egress of each veth end (the rate), and a 20 ms
 * delay on the ingress of each end: every IPv4 packet arriving on the veth is redirected
 * (`tc … ingress u32 … action mirred egress redirect`) into a TUN device where a small C
 * program (bench/network-bench.delay.c, compiled into bench/work/network) holds it 20 ms and
 * writes it back into the namespace's stack. The veth counters see each frame once, before
 * the delay. The achieved RTT and rate are measured and reported in every run.
 *
 * Everything runs between our own namespaces only: 10.203.0.1/30 (client) and 10.203.0.2/30
 * (server) on the veth; nothing else is ever a target. The namespaces, the veth and every
 * process are removed on exit, on error and on SIGINT/SIGTERM/SIGHUP.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { arg, rng } from './lib/workload.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const work = join(here, 'work', 'network');
const results = join(here, 'results');
/** The blockrep under test: a build of HEAD made by main() (or, with --tree, the working tree's). */
let cli = join(root, 'bin', 'blockrep.js');

const NS = { cli: 'blockrep-nb-cli', srv: 'blockrep-nb-srv' };
const VETH = { cli: 'brnb-c', srv: 'brnb-s' };
const TUN = { cli: 'brnb-tc', srv: 'brnb-ts' };
const ADDR = { cli: '10.203.0.1', srv: '10.203.0.2' };
const PORT = { blockrep: 8417, rsync: 8873, probe: 9417 };
const LINK = { rateMbit: 50, oneWayDelayMs: 20, tbfBurst: '16k', tbfLimitBytes: 1000 * 1514 };
const DISK = 'netbench';
const SAMPLE_MS = 50;
/** An interval counts as "transferring" above this rate (bulk direction). */
const BUSY_BITS_PER_S = 5e6;
const USER_HZ = 100;

const log = (s) => process.stderr.write(`${s}\n`);

// ---------------------------------------------------------------- children (probe traffic)

/** A TCP server in the server namespace: "E" echoes (RTT probe), "S" sinks and answers the count. */
function probeServer(port) {
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    let mode;
    let n = 0;
    s.on('data', (d) => {
      if (mode === undefined) mode = String.fromCharCode(d[0]);
      if (mode === 'E') s.write(d);
      else n += d.length;
    });
    s.on('end', () => s.end(mode === 'S' ? String(n) : ''));
    s.on('error', () => undefined);
  });
  server.listen(port, ADDR.srv, () => process.stdout.write('ready\n'));
  setTimeout(() => process.exit(0), 120_000).unref(); // bounded: the parent kills it long before
}

/** RTT (median of `count` 1-byte round trips) and a bulk transfer of `bytes`; prints JSON. */
async function probeClient(port, count, bytes) {
  const connect = () =>
    new Promise((resolve, reject) => {
      const s = net.connect(port, ADDR.srv, () => resolve(s));
      s.once('error', reject);
      s.setNoDelay(true);
    });
  const e = await connect();
  const rtts = [];
  for (let i = 0; i < count; i++) {
    const t = process.hrtime.bigint();
    await new Promise((r) => {
      e.once('data', r);
      e.write('E');
    });
    rtts.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  e.destroy();
  const s = await connect();
  const buf = Buffer.alloc(MiB, 0x5a);
  buf[0] = 'S'.charCodeAt(0);
  const t0 = process.hrtime.bigint();
  const answer = new Promise((resolve) => {
    let text = '';
    s.on('data', (d) => (text += d));
    s.on('end', () => resolve(text));
  });
  let sent = 0;
  await new Promise((resolve) => {
    const pump = () => {
      while (sent < bytes) {
        sent += buf.length;
        if (!s.write(buf)) return s.once('drain', pump);
      }
      s.end();
      resolve();
    };
    pump();
  });
  const received = Number(await answer);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(`${JSON.stringify({ rttMs: median(rtts), rttsMs: rtts.map((x) => round(x, 2)), bytes: received, seconds })}\n`);
  process.exit(0);
}

// ---------------------------------------------------------------- process and system helpers

/** Processes we started: killed by pid at cleanup. */
const children = new Map();
let cleaned = false;

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB, timeout: opts.timeoutMs ?? 600_000, ...opts });
  if (r.status !== 0 && !opts.allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}): ${(r.stderr ?? '').trim()}`);
  }
  return r;
}
const nsx = (ns, cmd, args, opts) => sh('ip', ['netns', 'exec', ns, cmd, ...args], opts);

/**
 * Starts a long-running process; resolves once `readyLine` appears on its stdout (bounded).
 * @param {string} name
 * @param {string[]} argv
 * @param {{ env?: NodeJS.ProcessEnv, readyLine?: string, stderrFile?: string, timeoutMs?: number }} [options]
 */
function startProcess(name, argv, { env, readyLine, stderrFile, timeoutMs = 20_000 } = {}) {
  const errFd = stderrFile ? openSync(stderrFile, 'a') : 'ignore';
  const child = spawn(argv[0], argv.slice(1), { env: env ?? process.env, stdio: ['ignore', readyLine ? 'pipe' : 'ignore', errFd] });
  if (typeof errFd === 'number') closeSync(errFd);
  children.set(child.pid, { name, child });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  exited.then(() => children.delete(child.pid));
  const proc = { name, pid: child.pid, child, exited, firstLine: undefined };
  if (!readyLine) return Promise.resolve(proc);
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start within ${timeoutMs} ms`)), timeoutMs);
    child.stdout.on('data', (d) => {
      text += d;
      const nl = text.indexOf('\n');
      if (nl >= 0 && proc.firstLine === undefined) {
        proc.firstLine = text.slice(0, nl);
        clearTimeout(timer);
        if (proc.firstLine.includes(readyLine)) resolve(proc);
        else reject(new Error(`${name} printed "${proc.firstLine}" instead of "${readyLine}"`));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready${stderrFile ? `; see ${stderrFile}` : ''}`));
    });
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
async function stopProcess(proc, graceMs = 10_000) {
  if (!children.has(proc.pid)) return proc.exited;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  const r = await proc.exited;
  clearTimeout(timer);
  return r;
}

/** Runs a command to its end (bounded by timeoutMs) while `onTick` samples; wall time included. */
function runTimed(argv, { env, timeoutMs, onTick }) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const startedMs = Date.now();
    const child = spawn(argv[0], argv.slice(1), { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.set(child.pid, { name: argv.join(' '), child });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-64 * KiB)));
    const tick = onTick ? setInterval(() => onTick(Number(process.hrtime.bigint() - started) / 1e9), SAMPLE_MS) : undefined;
    onTick?.(0);
    const killer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${argv.join(' ')} took longer than ${timeoutMs / 1000} s: killed`));
    }, timeoutMs);
    child.once('exit', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      clearTimeout(killer);
      if (tick) clearInterval(tick);
      onTick?.(seconds);
      children.delete(child.pid);
      resolve({ code, signal, seconds, startedMs, stdout, stderr });
    });
  });
}

function cleanup() {
  if (cleaned) return;
  cleaned = true;
  for (const [pid] of children) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {}
  }
  if (children.size > 0) spawnSync('sleep', ['0.5']);
  for (const [pid] of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  removeNetwork();
  rmSync(join(work, '.lock'), { force: true });
  // Interrupted or failed: the logs stay for a look, the gigabytes go (unless --keep).
  if (!process.argv.includes('--keep') && existsSync(work)) {
    for (const f of ['disk.img', 'rsync-module', 'repo', 'repo.after-initial', 'client-cache', 'client-cache.after-initial', 'build']) rmSync(join(work, f), { recursive: true, force: true });
  }
}

/** Removes our namespaces (and any process still in them, all started by this bench). */
function removeNetwork() {
  for (const ns of [NS.cli, NS.srv]) {
    if (!existsSync(`/run/netns/${ns}`)) continue;
    const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout?.trim().split(/\s+/).filter(Boolean) ?? [];
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
    spawnSync('ip', ['-n', ns, 'link', 'del', ns === NS.cli ? VETH.cli : VETH.srv], { stdio: 'ignore' });
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
  spawnSync('ip', ['link', 'del', VETH.cli], { stdio: 'ignore' }); // a half-made pair in the root namespace
}

// ---------------------------------------------------------------- network setup

function setupNetwork() {
  removeNetwork();
  sh('ip', ['netns', 'add', NS.cli]);
  sh('ip', ['netns', 'add', NS.srv]);
  sh('ip', ['link', 'add', VETH.cli, 'type', 'veth', 'peer', 'name', VETH.srv]);
  sh('ip', ['link', 'set', VETH.cli, 'netns', NS.cli]);
  sh('ip', ['link', 'set', VETH.srv, 'netns', NS.srv]);
  for (const side of ['cli', 'srv']) {
    const ns = NS[side];
    // No IPv6 (no neighbour discovery chatter on the counters), no reverse-path filter (the
    // delayed packets re-enter through the TUN device).
    nsx(ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `${ADDR[side]}/30`, 'dev', VETH[side]]);
    // One counted frame = one wire frame: no TSO/GSO super-packets, no GRO merging.
    nsx(ns, 'ethtool', ['-K', VETH[side], 'tso', 'off', 'gso', 'off', 'gro', 'off', 'tx', 'off', 'rx', 'off']);
    sh('ip', ['-n', ns, 'link', 'set', VETH[side], 'up']);
  }
  // Static neighbours: no ARP on the counters either.
  const mac = (side) => JSON.parse(sh('ip', ['-n', NS[side], '-j', 'link', 'show', VETH[side]]).stdout)[0].address;
  sh('ip', ['-n', NS.cli, 'neigh', 'replace', ADDR.srv, 'lladdr', mac('srv'), 'dev', VETH.cli, 'nud', 'permanent']);
  sh('ip', ['-n', NS.srv, 'neigh', 'replace', ADDR.cli, 'lladdr', mac('cli'), 'dev', VETH.srv, 'nud', 'permanent']);
  for (const side of ['cli', 'srv']) {
    sh('ip', ['-n', NS[side], 'tuntap', 'add', 'dev', TUN[side], 'mode', 'tun']);
    sh('ip', ['-n', NS[side], 'link', 'set', TUN[side], 'txqueuelen', '10000', 'up']);
    nsx(NS[side], 'sysctl', ['-qw', `net.ipv4.conf.${TUN[side]}.rp_filter=0`]);
  }
}

const delayers = [];

async function shape(on) {
  for (const side of ['cli', 'srv']) {
    sh('tc', ['-n', NS[side], 'qdisc', 'del', 'dev', VETH[side], 'root'], { allowFail: true, stdio: 'ignore' });
    sh('tc', ['-n', NS[side], 'qdisc', 'del', 'dev', VETH[side], 'ingress'], { allowFail: true, stdio: 'ignore' });
  }
  while (delayers.length > 0) await stopProcess(delayers.pop());
  if (!on) return;
  for (const side of ['cli', 'srv']) {
    delayers.push(
      // Real-time priority (it uses little CPU): on this busy machine a delayed packet must not
      // also wait for a CPU.
      await startProcess(`delay ${side}`, ['ip', 'netns', 'exec', NS[side], 'chrt', '-f', '10', join(work, 'network-bench-delay'), TUN[side], String(LINK.oneWayDelayMs * 1000)], {
        readyLine: 'ready',
        stderrFile: join(work, `delay-${side}.log`),
      }),
    );
    sh('tc', ['-n', NS[side], 'qdisc', 'add', 'dev', VETH[side], 'root', 'tbf', 'rate', `${LINK.rateMbit}mbit`, 'burst', LINK.tbfBurst, 'limit', String(LINK.tbfLimitBytes)]);
    sh('tc', ['-n', NS[side], 'qdisc', 'add', 'dev', VETH[side], 'handle', 'ffff:', 'ingress']);
    sh('tc', ['-n', NS[side], 'filter', 'add', 'dev', VETH[side], 'parent', 'ffff:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', TUN[side]]);
  }
}

/** The veth counters of one side, read from sysfs inside its namespace. */
function vethCounters(side) {
  const base = `/sys/class/net/${VETH[side]}/statistics`;
  const [rxBytes, txBytes, rxPackets, txPackets] = nsx(NS[side], 'cat', [`${base}/rx_bytes`, `${base}/tx_bytes`, `${base}/rx_packets`, `${base}/tx_packets`]).stdout.trim().split('\n').map(Number);
  return { rxBytes, txBytes, rxPackets, txPackets };
}

/** Fast sampling for the timeline: /proc/<pid of a process in the namespace>/net/dev (same counters). */
function sampleDev(anchorPid, dev) {
  const text = readFileSync(`/proc/${anchorPid}/net/dev`, 'utf8');
  const line = text.split('\n').find((l) => l.trim().startsWith(`${dev}:`));
  const f = line.split(':')[1].trim().split(/\s+/).map(Number);
  return { rx: f[0], tx: f[8] };
}

/** Utime+stime (and of reaped children) of a process, in seconds. */
function procCpu(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ').map(Number);
    return { self: (f[11] + f[12]) / USER_HZ, children: (f[13] + f[14]) / USER_HZ };
  } catch {
    return { self: NaN, children: NaN };
  }
}

function machineBusy() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return (f.reduce((a, b) => a + b, 0) - idle) / USER_HZ;
}

// ---------------------------------------------------------------- the data

/** Seeded pseudo-random bytes (AES-128-CTR keystream): fast, unique everywhere, the same every run. */
function keystream(seedText, position, length) {
  const key = createHash('sha256').update(seedText).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64BE(BigInt(Math.floor(position / 16)), 8);
  return createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(length));
}

function writeAll(fd, buf, length, position) {
  for (let done = 0; done < length; ) done += writeSync(fd, buf, done, length - done, position + done);
}

function readAt(fd, length, position) {
  const b = Buffer.alloc(length);
  for (let done = 0; done < length; ) {
    const n = readSync(fd, b, done, length - done, position + done);
    if (n === 0) throw new Error('short read');
    done += n;
  }
  return b;
}

/**
 * The same content into every path: runs of 1–16 MiB, ~80 % random, ~10 % written zeros,
 * ~10 % log-like text (each 4 KiB stamped with its offset, so no two blocks are equal).
 */
function makeImages(paths, size) {
  const r = rng(0x6e657431);
  const text = Buffer.alloc(16 * MiB);
  for (let at = 0, n = 0; at < text.length; ) {
    n++;
    at += text.write(`2026-11-${String((n % 28) + 1).padStart(2, '0')}T03:${String(n % 60).padStart(2, '0')}:${String(n % 57).padStart(2, '0')} web${n % 7} nginx[${1000 + (n % 97)}]: 10.0.${n % 255}.${(n * 7) % 255} "GET /api/v1/items/${n * 31} HTTP/1.1" ${n % 11 ? 200 : 404} ${(n * 131) % 9000}\n`, at, 'latin1');
  }
  const zeros = Buffer.alloc(16 * MiB);
  const fds = paths.map((p) => openSync(p, 'w'));
  const layout = { random: 0, zeros: 0, text: 0 };
  try {
    for (let at = 0, guard = 0; at < size && guard < size / MiB + 1; guard++) {
      const x = r();
      const kind = x < 0.8 ? 'random' : x < 0.9 ? 'zeros' : 'text';
      const bytes = Math.min(size - at, (1 + Math.floor(r() * 16)) * MiB);
      let src = zeros;
      if (kind === 'random') src = keystream('image', at, bytes);
      else if (kind === 'text') {
        for (let o = 0; o < bytes; o += 4096) text.write(`@${(at + o).toString(16).padStart(12, '0')}`, o, 'latin1');
        src = text;
      }
      for (const fd of fds) writeAll(fd, src, bytes, at);
      layout[kind] += bytes;
      at += bytes;
    }
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  return layout;
}

/**
 * The nightly change, as bench/block-size-bench.mjs and the issue define it: 1 % of the image,
 * about half as scattered 4–64 KiB writes (512-byte aligned), half as a few 1–8 MiB extents.
 */
function changePlan(size, seed) {
  const r = rng(seed);
  const target = size / 100;
  const extents = [];
  let written = 0;
  while (written < target / 2 && extents.length < 1e6) {
    const len = Math.round(((4 + r() * 60) * KiB) / 512) * 512;
    const off = Math.floor((r() * (size - len)) / 512) * 512;
    extents.push({ off, len, kind: 'scattered' });
    written += len;
  }
  while (written < target && extents.length < 1e6) {
    const len = Math.max(MiB, Math.round(Math.min((1 + r() * 7) * MiB, target - written + MiB) / 4096) * 4096);
    const off = Math.floor((r() * (size - len)) / 4096) * 4096;
    extents.push({ off, len, kind: 'extent' });
    written += len;
  }
  return { extents, written };
}

/** Applies the change to `path`; returns the original bytes of every extent (read before any write). */
function applyChange(path, plan) {
  const fd = openSync(path, 'r+');
  try {
    const undo = plan.extents.map((e) => readAt(fd, e.len, e.off));
    plan.extents.forEach((e, i) => writeAll(fd, keystream(`change ${i}`, 0, e.len), e.len, e.off));
    return undo;
  } finally {
    closeSync(fd);
  }
}

function undoChange(path, plan, undo) {
  const fd = openSync(path, 'r+');
  try {
    plan.extents.forEach((e, i) => writeAll(fd, undo[i], e.len, e.off));
  } finally {
    closeSync(fd);
  }
}

/** Whether `b` holds the same bytes as `a` in every changed extent. */
function sameExtents(a, b, plan) {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    return plan.extents.every((e) => readAt(fa, e.len, e.off).equals(readAt(fb, e.len, e.off)));
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

function blocksTouched(plan, blockSize) {
  const set = new Set();
  for (const e of plan.extents) for (let b = Math.floor(e.off / blockSize); b <= Math.floor((e.off + e.len - 1) / blockSize); b++) set.add(b);
  return set.size;
}

// ---------------------------------------------------------------- measurements

function timeline(samples) {
  // samples: [{t, tx, rx}] of the client's veth (tx = client→server).
  const out = { intervals: [] };
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    if (dt <= 0) continue;
    out.intervals.push({ t0: samples[i - 1].t, t1: samples[i].t, up: samples[i].tx - samples[i - 1].tx, down: samples[i].rx - samples[i - 1].rx });
  }
  const span = (dir) => {
    const busy = out.intervals.filter((iv) => (iv[dir] * 8) / (iv.t1 - iv.t0) >= BUSY_BITS_PER_S);
    if (busy.length === 0) return { start: null, end: null, seconds: 0, bytes: 0, bitsPerS: 0 };
    const start = busy[0].t0;
    const end = busy.at(-1).t1;
    const bytes = out.intervals.filter((iv) => iv.t0 >= start && iv.t1 <= end).reduce((a, iv) => a + iv[dir], 0);
    return { start: round(start, 3), end: round(end, 3), seconds: round(end - start, 3), bytes, bitsPerS: Math.round((bytes * 8) / (end - start)) };
  };
  // Per-second rates, for the picture of where the time goes.
  const perSecond = [];
  for (const iv of out.intervals) {
    const s = Math.floor(iv.t0);
    perSecond[s] ??= { up: 0, down: 0 };
    perSecond[s].up += iv.up;
    perSecond[s].down += iv.down;
  }
  return {
    up: span('up'),
    down: span('down'),
    perSecondMbit: [...perSecond].map((x) => (x ? [round((x.up * 8) / 1e6, 1), round((x.down * 8) / 1e6, 1)] : [0, 0])),
  };
}

/** Runs a client in the client namespace, sampling the veth; counters and CPU around it. */
/**
 * @param {string[]} argv
 * @param {{ env?: NodeJS.ProcessEnv, timeoutMs: number, serverPid?: number, serverCpuChildren?: boolean, anchorPid?: number }} options
 */
async function measured(argv, { env, timeoutMs, serverPid, serverCpuChildren = false, anchorPid }) {
  sh('sync', []);
  const samples = [];
  const c0 = vethCounters('cli');
  const s0 = vethCounters('srv');
  const cpu0 = serverPid ? procCpu(serverPid) : undefined;
  const busy0 = machineBusy();
  const load = loadavg()[0];
  const timeFile = join(work, 'time.out');
  rmSync(timeFile, { force: true });
  const run = await runTimed(['ip', 'netns', 'exec', NS.cli, '/usr/bin/time', '-f', 'BENCHTIME %e %U %S %M', '-o', timeFile, ...argv], {
    env,
    timeoutMs,
    onTick: (t) => {
      if (samples.length < timeoutMs / SAMPLE_MS + 10) samples.push({ t, ...sampleDev(anchorPid, VETH.cli) });
    },
  });
  // The rsync daemon's forked children count once it has reaped them (bounded wait).
  let cpu1 = serverPid ? procCpu(serverPid) : undefined;
  for (let i = 0; i < 20 && serverCpuChildren && cpu1.children === cpu0.children; i++) {
    await sleep(100);
    cpu1 = procCpu(serverPid);
  }
  const busy1 = machineBusy();
  const c1 = vethCounters('cli');
  const s1 = vethCounters('srv');
  const t = existsSync(timeFile) ? readFileSync(timeFile, 'utf8').split('\n').find((l) => l.startsWith('BENCHTIME')) : undefined;
  const [, , user, sys, rssKiB] = t ? t.split(' ').map(Number) : [];
  const clientCpu = user + sys;
  const serverCpu = cpu0 ? (serverCpuChildren ? cpu1.children - cpu0.children : cpu1.self - cpu0.self) : 0;
  if (run.code !== 0) throw new Error(`${argv.join(' ')} failed (${run.code ?? run.signal}): ${run.stderr.slice(-2000)}${run.stdout.slice(-2000)}`);
  const wire = {
    upBytes: c1.txBytes - c0.txBytes,
    downBytes: c1.rxBytes - c0.rxBytes,
    upPackets: c1.txPackets - c0.txPackets,
    downPackets: c1.rxPackets - c0.rxPackets,
    // The other end's view of the same frames (differs only by drops in the shaper).
    serverRxBytes: s1.rxBytes - s0.rxBytes,
    serverTxBytes: s1.txBytes - s0.txBytes,
  };
  wire.totalBytes = wire.upBytes + wire.downBytes;
  return {
    seconds: round(run.seconds, 3),
    startedMs: run.startedMs,
    stdout: run.stdout,
    wire,
    timeline: timeline(samples),
    cpu: {
      clientSeconds: round(clientCpu, 2),
      clientMaxRssMiB: round(rssKiB / 1024, 1),
      serverSeconds: round(serverCpu, 2),
      otherCores: round(Math.max(0, busy1 - busy0 - clientCpu - serverCpu) / run.seconds, 2),
    },
    loadAvg1: round(load, 2),
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- main

async function main() {
  if (process.getuid?.() !== 0) {
    log('bench:network needs root: it creates network namespaces, a veth pair, tc qdiscs and TUN devices (and installs iproute2, ethtool, rsync, gcc). Run it as root, e.g. `sudo npm run bench:network`.');
    process.exit(1);
  }
  const size = Number(arg('--size', String(4 * GiB)));
  const reps = Number(arg('--reps', '3'));
  const budgetMs = Number(arg('--budget-min', '14')) * 60_000;
  const blockSizeArg = arg('--block-size', undefined);
  const keep = process.argv.includes('--keep');
  const check = process.argv.includes('--check');
  if (!(size >= 64 * MiB) || size % MiB !== 0 || !(reps >= 1 && reps <= 20)) throw new Error('--size must be a multiple of 1 MiB, at least 64 MiB; --reps 1..20');
  const benchStart = Date.now();

  ensurePackages();
  mkdirSync(work, { recursive: true });
  mkdirSync(results, { recursive: true });
  const lockFile = join(work, '.lock');
  if (existsSync(lockFile)) {
    const pid = Number(readFileSync(lockFile, 'utf8'));
    if (pid && existsSync(`/proc/${pid}`)) throw new Error(`another bench:network runs (pid ${pid})`);
  }
  writeFileSync(lockFile, String(process.pid));
  for (const f of readdirSync(work)) if (f !== '.lock') rmSync(join(work, f), { recursive: true, force: true });

  sh('cc', ['-O2', '-Wall', '-o', join(work, 'network-bench-delay'), join(here, 'network-bench.delay.c')]);
  const code = buildUnderTest(process.argv.includes('--tree'));
  log(`blockrep under test: ${code.what}`);
  const loadAtStart = loadavg().map((x) => round(x, 2));
  log(`bench:network: ${(size / GiB).toFixed(2)} GiB image, ${reps} repetitions, load ${loadAtStart.join(' ')}`);

  // -- the data: the image (client side) and rsync's copy (server side), the same bytes.
  const image = join(work, 'disk.img');
  const moduleDir = join(work, 'rsync-module');
  const rsyncCopy = join(moduleDir, 'disk.img');
  mkdirSync(moduleDir);
  let t = Date.now();
  const layout = makeImages([image, rsyncCopy], size);
  log(`  images written in ${((Date.now() - t) / 1000).toFixed(1)} s (${Object.entries(layout).map(([k, v]) => `${k} ${(v / GiB).toFixed(2)} GiB`).join(', ')})`);

  setupNetwork();
  const anchors = {
    cli: await startProcess('anchor cli', ['ip', 'netns', 'exec', NS.cli, 'sleep', '86400']),
    srv: await startProcess('anchor srv', ['ip', 'netns', 'exec', NS.srv, 'sleep', '86400']),
  };
  // Until `ip netns exec` has become `sleep`, /proc/<pid>/net is still the root namespace's.
  for (const a of Object.values(anchors)) {
    for (let i = 0; i < 100 && readFileSync(`/proc/${a.pid}/comm`, 'utf8').trim() !== 'sleep'; i++) await sleep(20);
  }

  // -- rsync daemon (server namespace), module = the folder holding the unchanged copy.
  const rsyncConf = join(work, 'rsyncd.conf');
  writeFileSync(rsyncConf, [`pid file = ${join(work, 'rsyncd.pid')}`, 'use chroot = no', 'uid = root', 'gid = root', `log file = ${join(work, 'rsyncd.log')}`, '[bench]', `  path = ${moduleDir}`, '  read only = no', ''].join('\n'));
  const rsyncd = await startProcess('rsync daemon', ['ip', 'netns', 'exec', NS.srv, 'rsync', '--daemon', '--no-detach', `--config=${rsyncConf}`, `--address=${ADDR.srv}`, `--port=${PORT.rsync}`], {
    stderrFile: join(work, 'rsyncd.stderr'),
  });

  // -- blockrep serve (server namespace) with a token.
  const repo = join(work, 'repo');
  const repoSaved = join(work, 'repo.after-initial');
  const cache = join(work, 'client-cache');
  const cacheSaved = join(work, 'client-cache.after-initial');
  const tokens = join(work, 'tokens.json');
  const token = sh(process.execPath, [cli, 'token', 'create', '--tokens', tokens, '--name', 'bench', '--disks', '*', '--rights', 'read,write,admin']).stdout.trim().split('\n').at(-1);
  const clientEnv = { ...process.env, BLOCKREP_TOKEN: token, BLOCKREP_CACHE_DIR: cache };
  const url = `http://${ADDR.srv}:${PORT.blockrep}`;
  let serverLog;
  const startServer = async (logName) => {
    serverLog = join(work, `${logName}.serve.log`);
    return startProcess('blockrep serve', ['ip', 'netns', 'exec', NS.srv, process.execPath, cli, 'serve', '--root', repo, '--listen', `${ADDR.srv}:${PORT.blockrep}`, '--tokens', tokens], {
      readyLine: 'listening on',
      stderrFile: serverLog,
    });
  };
  const backupArgv = [process.execPath, cli, 'backup', image, '--repo', url, '--disk', DISK, '--json', ...(blockSizeArg ? ['--block-size', blockSizeArg] : [])];

  // -- link checks, unshaped.
  await waitForPort(anchors, PORT.rsync);
  const linkChecks = { loopback: await probeLink(anchors, 200 * MiB) };
  log(`  loopback link: RTT ${linkChecks.loopback.rttMs} ms, ${linkChecks.loopback.wireMbit} Mbit/s on the wire`);

  const prime = () => {
    // Both tools read a page-cached image; the rsync daemon reads its copy; blockrep's server
    // stats chunk files and reads the previous manifest. All of it is read before every
    // measurement, whichever tool runs (this machine's DAMON reclaims cold page cache).
    sh('cat', [image, rsyncCopy], { stdio: 'ignore' });
    sh('find', [repo, '-type', 'f', '-name', '*.manifest', '-exec', 'cat', '{}', '+'], { stdio: 'ignore' });
    sh('find', [repo, '-type', 'f'], { stdio: 'ignore' });
  };

  // -- the initial backup of the unchanged image, into the repository folder (no server: the
  // first backup is not what this bench measures, and over HTTP it takes minutes), then a
  // backup with nothing changed through the server, which leaves the repository and the
  // client's manifest cache as a nightly run finds them.
  const localArgv = [process.execPath, cli, 'backup', image, '--repo', repo, '--disk', DISK, '--json', ...(blockSizeArg ? ['--block-size', blockSizeArg] : [])];
  const initial = await measured(localArgv, { env: process.env, timeoutMs: 1_200_000, anchorPid: anchors.cli.pid });
  const initialReport = JSON.parse(initial.stdout).disks[0];
  log(`  initial backup (local): ${initial.seconds.toFixed(1)} s, ${initialReport.blocks} blocks of ${initialReport.blockSize / KiB} KiB, ${mb(initialReport.bytesSent)} MB stored`);
  let server = await startServer('unchanged');
  prime();
  const unchanged = await measured(backupArgv, { env: clientEnv, timeoutMs: 600_000, serverPid: server.pid, anchorPid: anchors.cli.pid });
  await stopProcess(server);
  const unchangedReport = JSON.parse(unchanged.stdout).disks[0];
  if (unchangedReport.changedBlocks !== 0) throw new Error(`a backup of the unchanged image found ${unchangedReport.changedBlocks} changed blocks`);
  log(`  backup with nothing changed, through the server: ${unchanged.seconds.toFixed(2)} s, ${mb(unchanged.wire.totalBytes)} MB on the wire`);
  sh('cp', ['-a', repo, repoSaved]);
  sh('cp', ['-a', cache, cacheSaved]);

  // -- the nightly change (the rsync copy keeps the previous state).
  const plan = changePlan(size, 42);
  const undo = applyChange(image, plan);
  const expectedChangedBlocks = blocksTouched(plan, initialReport.blockSize);
  const scattered = plan.extents.filter((e) => e.kind === 'scattered');
  log(`  change: ${mb(plan.written)} MB in ${scattered.length} scattered writes and ${plan.extents.length - scattered.length} extents; ${expectedChangedBlocks} blocks of ${initialReport.blockSize / KiB} KiB touched`);
  log(`  setup took ${((Date.now() - benchStart) / 1000).toFixed(0)} s`);

  const runs = [];
  const restoreRepo = () => {
    sh('rsync', ['-a', '--delete', `${repoSaved}/`, `${repo}/`]);
    sh('rsync', ['-a', '--delete', `${cacheSaved}/`, `${cache}/`]);
    const manifests = sh('find', [join(repo, 'disks'), '-name', '*.manifest']).stdout.trim().split('\n').filter(Boolean);
    if (manifests.length !== 2) throw new Error(`restored repository holds ${manifests.length} versions, not 2`);
  };

  const runBlockrep = async (caseName, rep) => {
    restoreRepo();
    const srv = await startServer(`${caseName}-${rep}`);
    prime();
    const m = await measured(backupArgv, { env: clientEnv, timeoutMs: 600_000, serverPid: srv.pid, anchorPid: anchors.cli.pid });
    await stopProcess(srv);
    const report = JSON.parse(m.stdout);
    const d = report.disks[0];
    if (d.changedBlocks !== expectedChangedBlocks) throw new Error(`blockrep found ${d.changedBlocks} changed blocks, the change touched ${expectedChangedBlocks}`);
    delete m.stdout;
    const phases = serverPhases(serverLog, m.startedMs, m.seconds);
    return { tool: 'blockrep', case: caseName, rep, ...m, blockrep: { bytesSent: d.bytesSent, changedBlocks: d.changedBlocks, newChunks: d.newChunks, reusedChunks: d.reusedChunks, bytesRead: d.bytesRead, durationMs: d.durationMs, blockSize: d.blockSize }, phases };
  };

  const runRsync = async (caseName, rep) => {
    undoChange(rsyncCopy, plan, undo);
    prime();
    const m = await measured(['rsync', '--no-whole-file', '--inplace', '--ignore-times', '--stats', '--no-human-readable', image, `rsync://${ADDR.srv}:${PORT.rsync}/bench/disk.img`], {
      timeoutMs: 600_000,
      serverPid: rsyncd.pid,
      serverCpuChildren: true,
      anchorPid: anchors.cli.pid,
    });
    if (!sameExtents(image, rsyncCopy, plan)) throw new Error('rsync left its copy different from the image in a changed extent');
    const stats = rsyncStats(m.stdout);
    delete m.stdout;
    return { tool: 'rsync', case: caseName, rep, ...m, rsync: stats };
  };

  const runLocal = async (rep) => {
    // blockrep into the repository folder itself, no server, no network: what the network adds.
    restoreRepo();
    prime();
    const m = await measured(localArgv, { env: process.env, timeoutMs: 600_000, anchorPid: anchors.cli.pid });
    const d = JSON.parse(m.stdout).disks[0];
    delete m.stdout;
    return { tool: 'blockrep-local', case: 'no network', rep, ...m, blockrep: { bytesSent: d.bytesSent, changedBlocks: d.changedBlocks, durationMs: d.durationMs } };
  };

  const show = (r) =>
    log(
      `    ${r.case.padEnd(8)} ${r.tool.padEnd(14)} ${r.seconds.toFixed(2).padStart(7)} s  wire ${mb(r.wire.totalBytes).padStart(7)} MB (up ${mb(r.wire.upBytes)}, down ${mb(r.wire.downBytes)})  ` +
        `busy up ${r.timeline.up.seconds.toFixed(1)} s at ${(r.timeline.up.bitsPerS / 1e6).toFixed(1)} Mbit/s  cpu client ${r.cpu.clientSeconds} s server ${r.cpu.serverSeconds} s  others ${r.cpu.otherCores} cores` +
        (r.blockrep ? `  sent ${mb(r.blockrep.bytesSent)} MB, ${r.blockrep.changedBlocks} blocks` : '') +
        (r.rsync ? `  literal ${mb(r.rsync.literalBytes)} MB` : ''),
    );

  let repsDone = 0;
  let repMs = 0;
  const loadPerRep = [];
  for (let rep = 1; rep <= reps; rep++) {
    const elapsed = Date.now() - benchStart;
    if (rep > 1 && elapsed + repMs * 1.1 + 30_000 > budgetMs) {
      log(`  stopping after ${repsDone} repetitions: another would end past the ${budgetMs / 60_000}-minute budget`);
      break;
    }
    const repStart = Date.now();
    loadPerRep.push(loadavg().map((x) => round(x, 2)));
    log(`  repetition ${rep}/${reps} (load ${loadPerRep.at(-1).join(' ')})`);
    // Alternate the order of the tools between repetitions.
    const order = rep % 2 ? ['blockrep', 'rsync'] : ['rsync', 'blockrep'];
    await shape(false);
    for (const tool of order) {
      const r = tool === 'blockrep' ? await runBlockrep('loopback', rep) : await runRsync('loopback', rep);
      runs.push(r);
      show(r);
    }
    const l = await runLocal(rep);
    runs.push(l);
    show(l);
    await shape(true);
    if (rep === 1) {
      linkChecks.wan = await probeLink(anchors, 25 * MiB);
      log(`  WAN link: RTT ${linkChecks.wan.rttMs} ms, ${linkChecks.wan.wireMbit} Mbit/s on the wire (${linkChecks.wan.goodputMbit} Mbit/s payload)`);
    }
    for (const tool of order) {
      const r = tool === 'blockrep' ? await runBlockrep('wan', rep) : await runRsync('wan', rep);
      runs.push(r);
      show(r);
    }
    await shape(false);
    repsDone++;
    repMs = Date.now() - repStart;
  }
  const delayStats = ['cli', 'srv'].map((s) => (existsSync(join(work, `delay-${s}.log`)) ? readFileSync(join(work, `delay-${s}.log`), 'utf8') : '').trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)));

  let checkResult;
  if (check) {
    log('  --check: restoring the last version and comparing it with the image');
    const out = join(work, 'restored.img');
    sh(process.execPath, [cli, 'restore', '--repo', repo, '--disk', DISK, '--to', out, '--json']);
    const same = sh('cmp', [out, image], { allowFail: true }).status === 0;
    checkResult = { restoredEqualsImage: same };
    rmSync(out, { force: true });
    if (!same) throw new Error('the restored version differs from the image');
  }
  const fullCopyCheck = sh('cmp', [image, rsyncCopy], { allowFail: true }).status === 0;

  const result = summarise({
    size,
    layout,
    plan,
    expectedChangedBlocks,
    initial: { seconds: initial.seconds, report: initialReport, cpu: initial.cpu },
    unchanged: { seconds: unchanged.seconds, wire: unchanged.wire, report: unchangedReport, cpu: unchanged.cpu, phases: serverPhases(join(work, 'unchanged.serve.log'), unchanged.startedMs, unchanged.seconds) },
    code,
    runs,
    repsDone,
    repsAsked: reps,
    linkChecks,
    delayStats,
    loadAtStart,
    loadPerRep,
    benchSeconds: (Date.now() - benchStart) / 1000,
    checkResult,
    fullCopyCheck,
    blockSizeArg,
  });
  writeFileSync(join(results, 'network.json'), `${JSON.stringify(result, null, 2)}\n`);
  const md = markdown(result);
  writeFileSync(join(results, 'network.md'), md);
  process.stdout.write(md);
  log('wrote bench/results/network.json and network.md');
  cleanup();
  if (!keep) rmSync(work, { recursive: true, force: true });
}

/**
 * The blockrep to measure: by default a build of the last commit (git archive HEAD, compiled
 * into bench/work/network/build) so that others rebuilding dist/ from their uncommitted work
 * during the run change nothing here; with --tree, the working tree's dist/ as it is.
 */
function buildUnderTest(tree) {
  const head = sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']).stdout.trim();
  const dirty = sh('git', ['-C', root, 'status', '--porcelain', '--', 'src']).stdout.trim().split('\n').filter(Boolean).map((l) => l.slice(3));
  if (tree) return { what: `the working tree's dist/ (HEAD ${head}, uncommitted changes in ${dirty.length} src files)`, commit: head, tree: true, uncommittedSrc: dirty };
  const build = join(work, 'build');
  mkdirSync(build, { recursive: true });
  sh('sh', ['-c', 'git -C "$1" archive HEAD src tsconfig.json bin package.json | tar -x -C "$2"', 'sh', root, build]);
  for (const link of ['node_modules', 'native']) sh('ln', ['-s', join(root, link), join(build, link)]);
  sh(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(build, 'tsconfig.json')]);
  cli = join(build, 'bin', 'blockrep.js');
  const subject = sh('git', ['-C', root, 'log', '-1', '--format=%s']).stdout.trim();
  return { what: `commit ${head} ("${subject.length > 80 ? `${subject.slice(0, 77)}...` : subject}"), built from git HEAD`, commit: head, tree: false };
}

function ensurePackages() {
  const need = [];
  const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
  if (!has('ip') || !has('tc')) need.push('iproute2');
  if (!has('ethtool')) need.push('ethtool');
  if (!has('rsync')) need.push('rsync');
  if (!has('cc')) need.push('gcc', 'libc6-dev');
  if (!existsSync('/usr/include/linux/if_tun.h')) need.push('linux-libc-dev');
  if (!existsSync('/usr/bin/time')) need.push('time');
  if (need.length === 0) return;
  log(`installing ${need.join(' ')} ...`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...need], { env, stdio: 'inherit' }).status === 0;
  if (!install()) {
    sh('apt-get', ['update', '-qq'], { env, stdio: 'inherit' });
    if (!install()) throw new Error(`could not install ${need.join(' ')}`);
  }
}

async function waitForPort(anchors, port) {
  for (let i = 0; i < 50; i++) {
    const r = spawnSync('ip', ['netns', 'exec', NS.cli, 'bash', '-c', `exec 3<>/dev/tcp/${ADDR.srv}/${port}`], { stdio: 'ignore' });
    if (r.status === 0) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on ${ADDR.srv}:${port} after 5 s`);
}

/** RTT and bulk rate between the namespaces, with the veth counters. */
async function probeLink(anchors, bytes) {
  const self = fileURLToPath(import.meta.url);
  const server = await startProcess('probe server', ['ip', 'netns', 'exec', NS.srv, process.execPath, self, '--child', 'probe-server', String(PORT.probe)], { readyLine: 'ready' });
  try {
    const c0 = vethCounters('cli');
    const r = sh('ip', ['netns', 'exec', NS.cli, process.execPath, self, '--child', 'probe-client', String(PORT.probe), '10', String(bytes)], { timeoutMs: 120_000 });
    const c1 = vethCounters('cli');
    const p = JSON.parse(r.stdout.trim().split('\n').at(-1));
    if (p.bytes < bytes) throw new Error(`probe: the server received ${p.bytes} of ${bytes} bytes`);
    return {
      rttMs: round(p.rttMs, 2),
      rttsMs: p.rttsMs,
      bytes: p.bytes,
      seconds: round(p.seconds, 3),
      goodputMbit: round((p.bytes * 8) / p.seconds / 1e6, 1),
      wireMbit: round(((c1.txBytes - c0.txBytes) * 8) / p.seconds / 1e6, 1),
    };
  } finally {
    await stopProcess(server);
  }
}

function rsyncStats(text) {
  const n = (re) => {
    const m = re.exec(text);
    return m ? Number(m[1].replace(/[,.]/g, '')) : NaN;
  };
  return {
    literalBytes: n(/Literal data: ([\d,.]+) bytes/),
    matchedBytes: n(/Matched data: ([\d,.]+) bytes/),
    sentBytes: n(/Total bytes sent: ([\d,.]+)/),
    receivedBytes: n(/Total bytes received: ([\d,.]+)/),
  };
}

/**
 * Where a blockrep run's time goes, from the server's request log (one line per request,
 * stamped when it ends, with its duration) against the client's start.
 */
function serverPhases(file, startedMs, seconds) {
  const lines = readFileSync(file, 'utf8').split('\n');
  const reqs = [];
  for (const line of lines) {
    const m = /^(\S+Z) (\S+) (\S+) (\d+)(?: \(cut\))? in=(\d+) out=(\d+) (\d+)ms/.exec(line);
    if (!m) continue;
    const end = Date.parse(m[1]) - startedMs;
    reqs.push({ method: m[2], kind: m[3], status: Number(m[4]), in: Number(m[5]), out: Number(m[6]), start: end - Number(m[7]), end });
  }
  if (reqs.length === 0) return undefined;
  const chunkReqs = reqs.filter((r) => r.kind === 'chunk');
  const puts = chunkReqs.filter((r) => r.method === 'PUT');
  const firstReq = Math.min(...reqs.map((r) => r.start));
  const firstChunk = chunkReqs.length ? Math.min(...chunkReqs.map((r) => r.start)) : undefined;
  const lastChunk = chunkReqs.length ? Math.max(...chunkReqs.map((r) => r.end)) : undefined;
  const byKind = {};
  for (const r of reqs) {
    const k = `${r.method} ${r.kind}`;
    byKind[k] ??= { count: 0, inBytes: 0, outBytes: 0, medianMs: 0, ms: [] };
    byKind[k].count++;
    byKind[k].inBytes += r.in;
    byKind[k].outBytes += r.out;
    byKind[k].ms.push(r.end - r.start);
  }
  for (const v of Object.values(byKind)) {
    v.medianMs = round(median(v.ms), 1);
    delete v.ms;
  }
  const s = (ms) => round(ms / 1000, 3);
  // Chunk requests open at the server, time-weighted over the chunk phase (the client keeps
  // up to 8 in flight; fewer means a round trip, the scan or the client holds them back).
  let inFlight = 0;
  if (firstChunk !== undefined && lastChunk > firstChunk) {
    const edges = chunkReqs.flatMap((r) => [[r.start, 1], [r.end, -1]]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let open = 0;
    let last = firstChunk;
    let area = 0;
    for (const [t, d] of edges) {
      area += open * (t - last);
      open += d;
      last = t;
    }
    inFlight = round(area / (lastChunk - firstChunk), 2);
  }
  return {
    chunkRequestsInFlight: inFlight,
    startupS: s(firstReq),
    beforeFirstChunkS: firstChunk === undefined ? null : s(firstChunk - firstReq),
    chunksS: firstChunk === undefined ? null : s(lastChunk - firstChunk),
    afterChunksS: lastChunk === undefined ? null : s(seconds * 1000 - lastChunk),
    chunkPutBytes: puts.reduce((a, r) => a + r.in, 0),
    requests: reqs.length,
    byKind,
  };
}

// ---------------------------------------------------------------- summary and report

function summarise(x) {
  const pick = (c, tool) => x.runs.filter((r) => r.case === c && r.tool === tool);
  const med = (list, f) => (list.length ? median(list.map(f)) : NaN);
  const stat = (c, tool) => {
    const list = pick(c, tool);
    if (list.length === 0) return undefined;
    return {
      runs: list.length,
      seconds: round(med(list, (r) => r.seconds), 3),
      secondsAll: list.map((r) => r.seconds),
      wireBytes: Math.round(med(list, (r) => r.wire.totalBytes)),
      wireUpBytes: Math.round(med(list, (r) => r.wire.upBytes)),
      wireDownBytes: Math.round(med(list, (r) => r.wire.downBytes)),
      wireBytesAll: list.map((r) => r.wire.totalBytes),
      busyUpSeconds: round(med(list, (r) => r.timeline.up.seconds), 2),
      goodputUpBitsPerS: Math.round(med(list, (r) => r.timeline.up.bitsPerS)),
      clientCpuSeconds: round(med(list, (r) => r.cpu.clientSeconds), 2),
      serverCpuSeconds: round(med(list, (r) => r.cpu.serverSeconds), 2),
      otherCores: list.map((r) => r.cpu.otherCores),
      loadAvg1: list.map((r) => r.loadAvg1),
      ...(list[0].blockrep ? { bytesSent: Math.round(med(list, (r) => r.blockrep.bytesSent)), changedBlocks: list[0].blockrep.changedBlocks } : {}),
      ...(list[0].rsync
        ? {
            literalBytes: Math.round(med(list, (r) => r.rsync.literalBytes)),
            rsyncSentBytes: Math.round(med(list, (r) => r.rsync.sentBytes)),
            rsyncReceivedBytes: Math.round(med(list, (r) => r.rsync.receivedBytes)),
          }
        : {}),
      ...(list[0].phases
        ? {
            phases: {
              startupS: round(med(list, (r) => r.phases.startupS), 3),
              beforeFirstChunkS: round(med(list, (r) => r.phases.beforeFirstChunkS ?? 0), 3),
              chunksS: round(med(list, (r) => r.phases.chunksS ?? 0), 3),
              afterChunksS: round(med(list, (r) => r.phases.afterChunksS ?? 0), 3),
              chunkRequestsInFlight: round(med(list, (r) => r.phases.chunkRequestsInFlight), 2),
            },
          }
        : {}),
    };
  };
  const cases = {};
  for (const c of ['loopback', 'wan']) cases[c] = { blockrep: stat(c, 'blockrep'), rsync: stat(c, 'rsync') };
  const local = stat('no network', 'blockrep-local');
  const linkBits = LINK.rateMbit * 1e6;
  const ratio = (a, b) => (a !== undefined && b !== undefined ? round(a / b, 3) : NaN);
  const targets = [
    { case: 'loopback', what: 'wall time, blockrep / rsync', value: ratio(cases.loopback.blockrep?.seconds, cases.loopback.rsync?.seconds), op: '<=', target: 0.3 },
    { case: 'loopback', what: 'bytes on the wire, blockrep / rsync', value: ratio(cases.loopback.blockrep?.wireBytes, cases.loopback.rsync?.wireBytes), op: '<=', target: 1.0 },
    { case: 'wan', what: 'wall time, blockrep / rsync', value: ratio(cases.wan.blockrep?.seconds, cases.wan.rsync?.seconds), op: '<=', target: 1.0 },
    { case: 'wan', what: "blockrep's goodput while transferring / link rate", value: ratio(cases.wan.blockrep?.goodputUpBitsPerS, linkBits), op: '>=', target: 0.85 },
  ].map((t) => ({ ...t, met: Number.isFinite(t.value) && (t.op === '<=' ? t.value <= t.target : t.value >= t.target) }));
  return {
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, memGiB: round(totalmem() / GiB, 1), node: process.version, kernel: sh('uname', ['-r']).stdout.trim(), rsync: sh('rsync', ['--version']).stdout.split('\n')[0] },
    load: { atStart: x.loadAtStart, perRepetition: x.loadPerRep, atEnd: loadavg().map((v) => round(v, 2)) },
    benchSeconds: round(x.benchSeconds, 1),
    repetitions: { done: x.repsDone, asked: x.repsAsked },
    link: {
      ...LINK,
      emulation: 'tbf on each veth egress + 20 ms ingress delay through a TUN device (no sch_netem in this kernel)',
      tcpCongestionControl: sh('ip', ['netns', 'exec', NS.cli, 'sysctl', '-n', 'net.ipv4.tcp_congestion_control'], { allowFail: true }).stdout?.trim() ?? readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim(),
      checks: x.linkChecks,
      delayHelper: x.delayStats,
    },
    image: { bytes: x.size, layout: x.layout },
    change: {
      bytes: x.plan.written,
      scatteredWrites: x.plan.extents.filter((e) => e.kind === 'scattered').length,
      extents: x.plan.extents.filter((e) => e.kind === 'extent').map((e) => e.len),
      seed: 42,
      blocksTouched: x.expectedChangedBlocks,
    },
    blockSize: x.initial.report.blockSize,
    blockrepUnderTest: x.code,
    initialBackup: { into: 'the repository folder (no server)', seconds: x.initial.seconds, bytesStored: x.initial.report.bytesSent, newChunks: x.initial.report.newChunks, cpu: x.initial.cpu },
    unchangedBackup: { seconds: x.unchanged.seconds, wireBytes: x.unchanged.wire.totalBytes, bytesSent: x.unchanged.report.bytesSent, cpu: x.unchanged.cpu, phases: x.unchanged.phases },
    targets,
    cases,
    blockrepLocal: local,
    checks: { rsyncCopyEqualsImage: x.fullCopyCheck, blockrepChangedBlocksAsExpected: true, ...(x.checkResult ?? {}) },
    runs: x.runs,
  };
}

function markdown(r) {
  const c = r.cases;
  const link = r.link.rateMbit * 1e6;
  const pct = (v) => `${(100 * v).toFixed(0)} %`;
  const row = (name, tool, s, rs) => {
    if (!s) return `| ${name} | ${tool} | – | – | – | – | – | – | – |`;
    const own = s.bytesSent !== undefined ? `bytesSent ${mb(s.bytesSent)} MB, changedBlocks ${s.changedBlocks}` : `literal ${mb(s.literalBytes)} MB, sent ${mb(s.rsyncSentBytes)} + received ${mb(s.rsyncReceivedBytes)} MB`;
    const wallRatio = rs && s !== rs ? `${(s.seconds / rs.seconds).toFixed(2)}×` : '1';
    const byteRatio = rs && s !== rs ? `${(s.wireBytes / rs.wireBytes).toFixed(2)}×` : '1';
    return `| ${name} | ${tool} | ${s.seconds.toFixed(2)} (${s.secondsAll.map((x) => x.toFixed(2)).join(' / ')}) | ${mb(s.wireBytes)} (↑ ${mb(s.wireUpBytes)} ↓ ${mb(s.wireDownBytes)}) | ${own} | ${wallRatio} / ${byteRatio} | ${(s.goodputUpBitsPerS / 1e6).toFixed(1)} Mbit/s over ${s.busyUpSeconds.toFixed(1)} s${name === 'wan' ? ` (${pct(s.goodputUpBitsPerS / link)} of the link)` : ''} | ${s.clientCpuSeconds} / ${s.serverCpuSeconds} | ${median(s.otherCores).toFixed(2)} |`;
  };
  const t = (x) => `| ${x.case} | ${x.what} | ${Number.isFinite(x.value) ? x.value.toFixed(2) : '–'} | ${x.op} ${x.target} | ${x.met ? 'met' : '**NOT met**'} |`;
  const ph = (s) => s?.phases;
  const phaseRow = (name, s) =>
    ph(s) ? `| ${name} | ${s.seconds.toFixed(2)} | ${ph(s).startupS.toFixed(2)} | ${ph(s).beforeFirstChunkS.toFixed(2)} | ${ph(s).chunksS.toFixed(2)} (${ph(s).chunkRequestsInFlight} in flight) | ${ph(s).afterChunksS.toFixed(2)} |` : `| ${name} | – | – | – | – | – |`;
  const lines = [
    '# Network benchmark: a nightly backup over a link, blockrep against rsync',
    '',
    `Generated by \`npm run bench:network\` (bench/network-bench.mjs) on ${r.date} in ${Math.round(r.benchSeconds)} s.`,
    `Machine: ${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.memGiB} GiB, Node ${r.machine.node}, kernel ${r.machine.kernel}, ${r.machine.rsync}.`,
    `**Shared machine**: load average ${r.load.atStart.join(' / ')} (1/5/15 min) at the start, ${r.load.perRepetition.map((l) => l[0]).join(', ')} at the start of each repetition, ${r.load.atEnd.join(' / ')} at the end; "others" in the runs (json) is the CPU other processes used during each run, in cores of ${r.machine.cores}.`,
    `Median of ${r.repetitions.done} repetitions${r.repetitions.done < r.repetitions.asked ? ` (of ${r.repetitions.asked} asked: the time budget ended the rest)` : ''}; the tools' order alternates between repetitions. MB = 10^6 bytes.`,
    '',
    '## Setup',
    '',
    `- Image: ${(r.image.bytes / GiB).toFixed(2)} GiB raw, non-sparse: ${Object.entries(r.image.layout).map(([k, v]) => `${k} ${(v / GiB).toFixed(2)} GiB`).join(', ')} (seeded runs of 1–16 MiB).`,
    `- Nightly change (seed ${r.change.seed}, the same places every run): ${mb(r.change.bytes)} MB = 1 %, ${r.change.scatteredWrites} scattered 4–64 KiB writes and ${r.change.extents.length} extents of ${r.change.extents.map((b) => (b / MiB).toFixed(1)).join(', ')} MiB, random bytes; ${r.change.blocksTouched} blocks of ${r.blockSize / KiB} KiB touched.`,
    `- blockrep: \`blockrep backup IMAGE --repo http://10.203.0.2:${PORT.blockrep} --disk ${DISK} --json\` (block size ${r.blockSize / KiB} KiB${r.blockSize === 256 * KiB ? ', the default' : ''}) to \`blockrep serve --tokens …\` holding the version of the initial backup, with the client's manifest cache as that backup left it. Blockrep under test: ${r.blockrepUnderTest.what}. The repository was made by an initial backup into its folder (${r.initialBackup.seconds.toFixed(1)} s, ${mb(r.initialBackup.bytesStored)} MB stored), then a backup with nothing changed through the server (loopback: ${r.unchangedBackup.seconds.toFixed(2)} s, ${mb(r.unchangedBackup.wireBytes)} MB on the wire), whose version is the parent of the measured one.`,
    `- rsync: \`rsync --no-whole-file --inplace --ignore-times --stats IMAGE rsync://10.203.0.2:${PORT.rsync}/bench/disk.img\` to \`rsync --daemon --no-detach\` whose module holds the unchanged copy.`,
    '- Before every run: the repository (and the client cache) restored to the post-initial-backup state with a local `rsync -a --delete` of a copy taken then, or rsync\'s copy restored by writing back the changed extents; `sync`; then the image, rsync\'s copy and the repository\'s manifests read (page-cached for both tools; caches are not dropped on this shared machine). The blockrep server is started before the clock starts; the clock covers the client process only (`ip netns exec … /usr/bin/time …`).',
    `- Link: two namespaces (client 10.203.0.1, server 10.203.0.2) joined by a veth pair with TSO/GSO/GRO and checksum offloads off; bytes on the wire = the client veth's tx + rx byte counters (Ethernet, IP and TCP headers included), identical to the server end's. "loopback" = the veth unshaped (probe: ${r.link.checks.loopback.wireMbit} Mbit/s, RTT ${r.link.checks.loopback.rttMs} ms). "wan" = ${r.link.rateMbit} Mbit/s each way (tbf, burst ${r.link.tbfBurst}, queue ${r.link.tbfLimitBytes} bytes) and ${2 * r.link.oneWayDelayMs} ms RTT; this kernel has no sch_netem, so the delay is a TUN device on each side's ingress (bench/network-bench.delay.c). Achieved: RTT ${r.link.checks.wan?.rttMs} ms, ${r.link.checks.wan?.wireMbit} Mbit/s on the wire for a ${mb(r.link.checks.wan?.bytes ?? 0)} MB TCP transfer (${r.link.checks.wan?.goodputMbit} Mbit/s payload). ${delaySummary(r.link.delayHelper)} TCP congestion control: ${r.link.tcpCongestionControl}.`,
    `- Goodput: the client→server bytes on the wire during the transfer (the span from the first to the last ${SAMPLE_MS} ms interval above ${BUSY_BITS_PER_S / 1e6} Mbit/s) divided by that span.`,
    '',
    '## Results',
    '',
    '| case | tool | wall s, median (runs) | MB on the wire (↑ client→server ↓ back) | the tool\'s own count | ratio to rsync: wall / wire bytes | goodput ↑ during the transfer | CPU s client / server | others\' load, cores |',
    '|---|---|---|---|---|---|---|---|---|',
    row('loopback', 'blockrep', c.loopback.blockrep, c.loopback.rsync),
    row('loopback', 'rsync', c.loopback.rsync, c.loopback.rsync),
    row('wan', 'blockrep', c.wan.blockrep, c.wan.rsync),
    row('wan', 'rsync', c.wan.rsync, c.wan.rsync),
    r.blockrepLocal ? `| no network | blockrep into the repository folder (reference) | ${r.blockrepLocal.seconds.toFixed(2)} (${r.blockrepLocal.secondsAll.map((x) => x.toFixed(2)).join(' / ')}) | – | bytesSent ${mb(r.blockrepLocal.bytesSent)} MB (stored whole: patches are an HTTP feature) | – | – | ${r.blockrepLocal.clientCpuSeconds} / – | ${median(r.blockrepLocal.otherCores).toFixed(2)} |` : '',
    '',
    `CPU s: user + system of the client process (\`/usr/bin/time\`) and of the server (blockrep serve; for rsync, the daemon's forked children). "Others' load": CPU time the rest of the machine (other engineers' tests) used during the run, in cores of ${r.machine.cores}: above 0 means the tools did not have the machine to themselves.`,
    '',
    '| case | target | value | target | |',
    '|---|---|---|---|---|',
    ...r.targets.map(t),
    '',
    '## Where the time goes',
    '',
    "blockrep, from the server's request log against the client's start (median per phase; the phases of the median run need not add up to the median wall time):",
    '',
    '| case | wall s | start-up: process, modules, until the first request | repository, lock, parent manifest, scan until the first changed block | changed blocks: scan, batched presence and patch-plan questions, chunk/patch PUTs, overlapped (mean chunk PUTs open at the server, of 8 allowed) | after the last chunk: flush, manifest, unlock, exit |',
    '|---|---|---|---|---|---|',
    phaseRow('loopback', c.loopback.blockrep),
    phaseRow('wan', c.wan.blockrep),
    '',
    'Requests of the median-time WAN blockrep run (count, bytes in, median duration):',
    '',
    ...requestTable(r.runs.filter((x) => x.case === 'wan' && x.tool === 'blockrep')),
    '',
    'Per-second wire rate (Mbit/s, ↑/↓) of the median-time run of each case and tool:',
    '',
    ...['loopback', 'wan'].flatMap((cs) =>
      ['blockrep', 'rsync'].map((tool) => {
        const list = r.runs.filter((x) => x.case === cs && x.tool === tool);
        if (list.length === 0) return '';
        const m = list.slice().sort((a, b) => a.seconds - b.seconds)[(list.length - 1) >> 1];
        return `- ${cs} ${tool} (${m.seconds.toFixed(1)} s): ${m.timeline.perSecondMbit.map(([u, d]) => `${u}/${d}`).join(' ')}`;
      }),
    ),
    '',
    `Checks: every blockrep run found exactly the ${r.change.blocksTouched} changed blocks; after every rsync run its copy equals the image in every changed extent; at the end rsync's copy equals the image byte for byte: ${r.checks.rsyncCopyEqualsImage}${r.checks.restoredEqualsImage !== undefined ? `; the last blockrep version restored equals the image: ${r.checks.restoredEqualsImage}` : ''}.`,
    '',
    'Analysis: [network-notes.md](network-notes.md).',
    '',
  ];
  return lines.join('\n');
}

/** The delay helpers' own account: how late they released packets (CPU scheduling), drops. */
function delaySummary(stats) {
  const all = stats.flat();
  if (all.length === 0) return '';
  const packets = all.reduce((a, x) => a + x.packets, 0);
  const meanLate = all.reduce((a, x) => a + (x.meanLateUs ?? 0) * x.packets, 0) / Math.max(1, packets);
  const over = all.reduce((a, x) => a + (x.lateOver1ms ?? 0), 0);
  return `The delay helpers (real-time priority) held ${packets} packets, released them on average ${meanLate.toFixed(0)} µs late, ${over} (${((100 * over) / Math.max(1, packets)).toFixed(2)} %) more than 1 ms late, at most ${(Math.max(...all.map((x) => x.maxLateUs)) / 1000).toFixed(1)} ms; dropped ${all.reduce((a, x) => a + x.drops, 0)}.`;
}

function requestTable(list) {
  if (list.length === 0) return [];
  const m = list.slice().sort((a, b) => a.seconds - b.seconds)[(list.length - 1) >> 1];
  if (!m.phases) return [];
  return [
    '| request | count | MB in | MB out | median ms |',
    '|---|---|---|---|---|',
    ...Object.entries(m.phases.byKind).map(([k, v]) => `| ${k} | ${v.count} | ${mb(v.inBytes)} | ${mb(v.outBytes)} | ${v.medianMs} |`),
  ];
}

function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const round = (x, d) => Math.round(x * 10 ** d) / 10 ** d;
const mb = (n) => (n / 1e6).toFixed(1);

// Last, so that every const above is initialised.
if (process.argv[2] === '--child') {
  const [, , , mode, ...rest] = process.argv;
  if (mode === 'probe-server') probeServer(Number(rest[0]));
  else if (mode === 'probe-client') await probeClient(Number(rest[0]), Number(rest[1]), Number(rest[2]));
} else {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      log(`bench:network: ${sig}, cleaning up`);
      cleanup();
      process.exit(130);
    });
  }
  process.on('exit', cleanup);
  try {
    await main();
  } catch (err) {
    log(`bench:network failed: ${err?.stack ?? err}`);
    cleanup();
    process.exit(1);
  }
}
