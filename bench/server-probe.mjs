#!/usr/bin/env node
/**
 * Server probe: `blockrep serve` attacked the way a client holding a write token could, while a
 * well-behaved client (another token, another loopback address) keeps working. Phases, one
 * after another, each with its own attacker address:
 *   baseline  nothing but the well-behaved client;
 *   deltas    20 manifest-delta uploads that each promise 40 MiB, send 36 MiB and stall;
 *   trickle   16 chunk uploads that promise 16 MiB and send a byte every 5 s;
 *   plans     patch plans of 1,024 items cycling over 8 stored 16 MiB compressible bases
 *             (~100 KB each), two at a time, and one more every second that hangs up at once;
 *   flood     1,100 idle connections from one address.
 * Meanwhile: the server's RSS (VmRSS of /proc/PID/status, every 200 ms; VmHWM at the end of
 * each phase), its CPU time per phase (/proc/PID/stat), and the latency of the client's PUT of
 * a fresh 4 KiB chunk and GET of it, one after another, every 250 ms (10 s timeout each).
 *
 * `npm run bench:server-probe` (builds, then runs, about 90 s). Options: --cli PATH (the
 * blockrep to probe: another build, for a before/after), --label TEXT (its name in the
 * results), --out NAME (bench/results/NAME.md/.json; default server-probe), --phase-s N
 * (seconds per attack phase; trickle gets at least 25). Everything is on 127.0.0.x; the server,
 * its folder and every socket are removed at the end, on error and on SIGINT/SIGTERM.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { arg } from './lib/workload.mjs';
import { encodeChunk, sliceHashes } from '../dist/chunk/index.js';

const MiB = 1024 * 1024;
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const work = join(here, 'work', 'server-probe');
const results = join(here, 'results');
const cli = arg('--cli', join(root, 'bin', 'blockrep.js'));
const label = arg('--label', 'this build');
const outName = arg('--out', 'server-probe');
const phaseMs = Number(arg('--phase-s', '12')) * 1000;
const VICTIM_ADDRESS = '127.0.0.2';
const ATTACKER = { deltas: '127.0.0.11', trickle: '127.0.0.12', plans: '127.0.0.13', flood: '127.0.0.14', setup: '127.0.0.15' };
const REQUEST_TIMEOUT_MS = 10_000;
const DELTA_TYPE = 'application/x-blockrep-manifest-delta';

const sockets = new Set();
let server;
let stopping = false;

function cleanup() {
  stopping = true;
  for (const s of sockets) s.destroy();
  if (server && server.exitCode === null) server.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    cleanup();
    process.exit(130);
  });
}

function token(tokensFile, name) {
  const r = spawnSync(process.execPath, [cli, 'token', 'create', '--tokens', tokensFile, '--name', name, '--disks', '*', '--rights', 'read,write'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`token create: ${r.stderr}`);
  return r.stdout.trim().split('\n').at(-1);
}

function startServer(repo, tokensFile) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, 'serve', '--root', repo, '--listen', '127.0.0.1:0', '--tokens', tokensFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = { errors: 0, lines: 0, aborted: 0, internal: 0 };
    let out = '';
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d) => {
      err += d;
      const lines = err.split('\n');
      err = lines.pop();
      for (const l of lines) {
        log.lines++;
        if (l.startsWith('error:')) log.errors++;
        if (/INTERNAL/.test(l)) log.internal++;
        if (/aborted by the client/.test(l)) log.aborted++;
      }
    });
    child.stdout.setEncoding('utf8').on('data', (d) => {
      out += d;
      const m = /^listening on (\S+)\n/.exec(out);
      if (m) resolve({ child, url: new URL(m[1]), log });
    });
    child.once('exit', (code) => reject(new Error(`blockrep serve exited with ${code}: ${err}`)));
  });
}

/**
 * One request (with a body, or none), from `localAddress`; resolves {status, ms} or {status: 'timeout'|'error'}.
 * @param {URL} url
 * @param {{ method: string, path: string, headers?: Record<string, string | number>, body?: Uint8Array, localAddress: string, timeoutMs?: number }} options
 */
function exchange(url, { method, path, headers = {}, body = undefined, localAddress, timeoutMs = REQUEST_TIMEOUT_MS }) {
  const started = performance.now();
  return new Promise((resolve) => {
    let done = false;
    const finish = (status) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ status, ms: performance.now() - started });
    };
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers, localAddress, agent: false }, (res) => {
      res.resume();
      res.on('end', () => finish(res.statusCode));
      res.on('error', () => finish('error'));
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish('timeout');
    }, timeoutMs);
    req.on('socket', (s) => {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    });
    req.on('error', () => finish('error'));
    req.end(body);
  });
}

/** A request that sends `head` bytes of its body and then what `drip` decides, until closed. */
function stalledUpload(url, { path, headers, first, localAddress }) {
  const socket = net.connect({ host: url.hostname, port: Number(url.port), localAddress });
  sockets.add(socket);
  const state = { status: undefined, socket };
  socket.on('error', () => undefined);
  socket.on('close', () => sockets.delete(socket));
  socket.on('data', (d) => {
    state.status ??= Number(/^HTTP\/1\.1 (\d{3})/.exec(d.toString('latin1'))?.[1] ?? 0);
  });
  const lines = [`PUT ${path} HTTP/1.1`, `host: ${url.host}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''];
  socket.write(lines.join('\r\n'));
  if (first) socket.write(first);
  return state;
}

function memory(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
    return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 };
  } catch {
    return { rss: 0, hwm: 0 };
  }
}

function cpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks of 1/100 s
  } catch {
    return 0;
  }
}

const chunkPath = (id) => `/v1/objects/chunks/${id.slice(0, 2)}/${id}`;
const auth = (secret) => ({ authorization: `Bearer ${secret}` });

function quantile(values, q) {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

async function main() {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const tokensFile = join(work, 'tokens.json');
  const secrets = { attacker: token(tokensFile, 'attacker'), victim: token(tokensFile, 'victim') };
  const { child, url, log } = await startServer(join(work, 'repo'), tokensFile);
  server = child;
  const pid = child.pid;

  // The attacker's bases: 8 chunks of 16 MiB that compress to almost nothing.
  const big = 16 * MiB;
  const bases = Array.from({ length: 8 }, (_, i) => encodeChunk(Buffer.alloc(big, i + 1)));
  for (const b of bases) {
    const r = await exchange(url, { method: 'PUT', path: chunkPath(b.id), headers: { ...auth(secrets.attacker), 'content-length': b.blob.length }, body: b.blob, localAddress: ATTACKER.setup, timeoutMs: 60_000 });
    if (r.status !== 201) throw new Error(`storing a base: ${r.status}`);
  }
  const planHashes = Array.from({ length: 8 }, (_, i) => sliceHashes(Buffer.alloc(big, (i + 2) % 256), big).toString('base64'));
  const planBody = Buffer.from(JSON.stringify({ sliceBytes: big, items: Array.from({ length: 1024 }, (_, i) => ({ base: bases[i % 8].id, hashes: planHashes[i % 8] })) }));

  // The well-behaved client and the sampler run through every phase.
  let phase = 'setup';
  const samples = [];
  const victim = [];
  const sampler = setInterval(() => samples.push({ phase, ...memory(pid) }), 200);
  const victimLoop = (async () => {
    while (!stopping) {
      const c = encodeChunk(randomBytes(4096));
      const put = await exchange(url, { method: 'PUT', path: chunkPath(c.id), headers: { ...auth(secrets.victim), 'content-length': c.blob.length }, body: c.blob, localAddress: VICTIM_ADDRESS });
      const at = phase;
      const get = put.status === 201 ? await exchange(url, { method: 'GET', path: chunkPath(c.id), headers: auth(secrets.victim), localAddress: VICTIM_ADDRESS }) : { status: 'skipped', ms: 0 };
      victim.push({ phase: at, put, get });
      await sleep(250);
    }
  })();

  const phases = [];
  const run = async (name, ms, attack) => {
    phase = name;
    process.stderr.write(`server-probe: ${name} (${Math.round(ms / 1000)} s)\n`);
    const cpu0 = cpuSeconds(pid);
    const t0 = performance.now();
    const outcome = await attack(ms);
    phases.push({ name, seconds: (performance.now() - t0) / 1000, cpuSeconds: cpuSeconds(pid) - cpu0, hwmBytes: memory(pid).hwm, attacker: outcome });
  };
  const tally = (statuses) => statuses.reduce((acc, s) => ((acc[s ?? 'none'] = (acc[s ?? 'none'] ?? 0) + 1), acc), {});

  await run('baseline', 8000, async (ms) => {
    await sleep(ms);
    return {};
  });

  await run('deltas', phaseMs, async (ms) => {
    const ups = [];
    for (let i = 0; i < 20; i++) {
      const version = `20261126T0335${String(i).padStart(2, '0')}.123Z-aaaaaa`;
      ups.push(stalledUpload(url, { path: `/v1/objects/disks/probe/${version}.manifest`, headers: { ...auth(secrets.attacker), 'content-type': DELTA_TYPE, 'if-none-match': '*', 'content-length': 40 * MiB }, first: Buffer.alloc(36 * MiB, 7), localAddress: ATTACKER.deltas }));
    }
    await sleep(ms);
    const out = { uploads: 20, answered: tally(ups.map((u) => u.status)) };
    for (const u of ups) u.socket.destroy();
    return out;
  });

  await run('trickle', Math.max(phaseMs, 25_000), async (ms) => {
    const ups = [];
    for (let i = 0; i < 16; i++) {
      ups.push(stalledUpload(url, { path: chunkPath(randomBytes(32).toString('hex')), headers: { ...auth(secrets.attacker), 'content-length': 16 * MiB }, first: Buffer.from('B'), localAddress: ATTACKER.trickle }));
    }
    const drip = setInterval(() => {
      for (const u of ups) if (!u.socket.destroyed) u.socket.write(Buffer.from('x'));
    }, 5000);
    await sleep(ms);
    clearInterval(drip);
    const out = { uploads: 16, answered: tally(ups.map((u) => u.status)), stillOpen: ups.filter((u) => !u.socket.destroyed && u.status === undefined).length };
    for (const u of ups) u.socket.destroy();
    return out;
  });

  await run('plans', phaseMs, async (ms) => {
    const until = performance.now() + ms;
    const statuses = [];
    const loop = async () => {
      while (performance.now() < until) {
        const r = await exchange(url, { method: 'POST', path: '/v1/patch-plans', headers: { ...auth(secrets.attacker), 'content-type': 'application/json', 'content-length': planBody.length }, body: planBody, localAddress: ATTACKER.plans, timeoutMs: Math.max(1000, until - performance.now()) });
        statuses.push({ status: r.status, ms: r.ms });
      }
    };
    let hungUp = 0;
    const hangUps = (async () => {
      while (performance.now() < until - 1000) {
        await exchange(url, { method: 'POST', path: '/v1/patch-plans', headers: { ...auth(secrets.attacker), 'content-type': 'application/json', 'content-length': planBody.length }, body: planBody, localAddress: ATTACKER.plans, timeoutMs: 300 });
        hungUp++;
        await sleep(700);
      }
    })();
    await Promise.all([loop(), loop(), hangUps]);
    const done = statuses.filter((s) => s.status === 200);
    return { bodyBytes: planBody.length, answered: tally(statuses.map((s) => s.status)), medianPlanMs: round(quantile(done.map((s) => s.ms), 0.5)), hungUp };
  });

  await run('flood', phaseMs, async (ms) => {
    const open = [];
    for (let i = 0; i < 1100; i++) {
      const s = net.connect({ host: url.hostname, port: Number(url.port), localAddress: ATTACKER.flood });
      s.on('error', () => undefined);
      sockets.add(s);
      const st = { socket: s, refused: false, connected: false };
      s.once('connect', () => (st.connected = true));
      s.on('data', (d) => {
        if (/^HTTP\/1\.1 503/.test(d.toString('latin1'))) st.refused = true;
      });
      open.push(st);
    }
    await sleep(ms);
    const out = { connections: 1100, refusedWith503: open.filter((o) => o.refused).length, stillOpen: open.filter((o) => !o.socket.destroyed && !o.refused).length };
    for (const o of open) o.socket.destroy();
    return out;
  });

  phase = 'done';
  stopping = true;
  clearInterval(sampler);
  await victimLoop;
  // A server still busy with work its clients abandoned may not stop in time: then it is killed.
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const stopTimer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(stopTimer);
  return { phases, samples, victim, log };
}

function report({ phases, samples, victim, log }, started) {
  const byPhase = phases.map((p) => {
    const mine = victim.filter((v) => v.phase === p.name);
    const ok = (x) => typeof x.status === 'number' && x.status < 300;
    const lat = (k) => mine.filter((v) => ok(v[k])).map((v) => v[k].ms);
    const failed = (k) => mine.filter((v) => v[k].status !== 'skipped' && !ok(v[k])).map((v) => v[k].status);
    const rss = samples.filter((s) => s.phase === p.name).map((s) => s.rss);
    return {
      phase: p.name,
      seconds: Math.round(p.seconds * 10) / 10,
      serverCpuSeconds: Math.round(p.cpuSeconds * 100) / 100,
      rssMaxMB: rss.length ? Math.round(Math.max(...rss) / 1e6) : null,
      hwmAtEndMB: Math.round(p.hwmBytes / 1e6),
      put: { done: lat('put').length, p50Ms: round(quantile(lat('put'), 0.5)), maxMs: round(Math.max(0, ...lat('put'))), failed: failed('put') },
      get: { done: lat('get').length, p50Ms: round(quantile(lat('get'), 0.5)), maxMs: round(Math.max(0, ...lat('get'))), failed: failed('get') },
      attacker: p.attacker,
    };
  });
  return {
    generatedBy: 'npm run bench:server-probe (bench/server-probe.mjs)',
    date: new Date().toISOString(),
    label,
    seconds: Math.round((performance.now() - started) / 1000),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10, node: process.version, loadavg: loadavg().map((x) => Math.round(x * 100) / 100) },
    serverLog: log,
    phases: byPhase,
  };
}

function round(x) {
  return x === null || x === undefined ? null : Math.round(x);
}

const ms = (x) => (x === null ? '–' : `${x}`);
const failures = (f) => (f.length === 0 ? '' : ` (${Object.entries(f.reduce((a, s) => ((a[s] = (a[s] ?? 0) + 1), a), {})).map(([s, n]) => `${n}× ${s}`).join(', ')})`);

function table(run) {
  const rows = run.phases.map((p) => {
    const a = Object.entries(p.attacker)
      .map(([k, v]) => `${k} ${typeof v === 'object' && v !== null ? JSON.stringify(v).replaceAll('"', '') : v}`)
      .join('; ');
    return `| ${p.phase} | ${p.seconds} | ${ms(p.rssMaxMB)} / ${p.hwmAtEndMB} | ${p.serverCpuSeconds} | ${p.put.done}, ${ms(p.put.p50Ms)} / ${ms(p.put.maxMs)}${failures(p.put.failed)} | ${p.get.done}, ${ms(p.get.p50Ms)} / ${ms(p.get.maxMs)}${failures(p.get.failed)} | ${a || '–'} |`;
  });
  return [
    `**${run.label}** (${run.date}, ${run.seconds} s; load average ${run.machine.loadavg.join(' / ')} at the end; server log: ${run.serverLog.lines} lines, ${run.serverLog.errors} "error:" lines, ${run.serverLog.internal} INTERNAL, ${run.serverLog.aborted} "aborted by the client")`,
    '',
    '| phase | s | server RSS max / VmHWM at its end, MB | server CPU s | client PUT 4 KiB: done, p50 / max ms (failed) | client GET: done, p50 / max ms (failed) | attacker |',
    '|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function markdown(runs) {
  const m = runs[runs.length - 1].machine;
  return [
    '# Server probe: a client with a token against `blockrep serve`',
    '',
    `Generated by \`npm run bench:server-probe\` (bench/server-probe.mjs). Machine: ${m.cpu}, ${m.cpus} cores, ${m.memGiB} GiB, Node ${m.node}; **shared** with other engineers' test runs (see the load averages).`,
    '',
    'One `blockrep serve --tokens` on 127.0.0.1 with its default limits; the attacker holds one write token (read and write on `*`), the well-behaved client another, from 127.0.0.2. Phases, each from its own attacker address (127.0.0.11–14): **deltas** — 20 manifest-delta uploads that promise 40 MiB, send 36 MiB and stall; **trickle** — 16 chunk uploads that promise 16 MiB and send a byte every 5 s; **plans** — `POST /v1/patch-plans` of 1,024 items cycling over 8 stored 16 MiB compressible bases (~100 KB each), two at a time, plus one every second that the attacker abandons after 300 ms; **flood** — 1,100 idle connections from one address. Meanwhile the client PUTs a fresh 4 KiB chunk and GETs it, one after the other, every 250 ms (10 s timeout: `timeout`; `error`: the connection failed or was refused). RSS: VmRSS of /proc/PID/status every 200 ms; VmHWM is the peak since the server started.',
    '',
    ...runs.flatMap((r) => [table(r), '']),
    'Attacker columns: `answered` counts the statuses its requests got (`none`: no answer by the end of the phase); `stillOpen`: its connections still open, unanswered, at the end; `refusedWith503`: flood connections refused at once.',
    '',
  ].join('\n');
}

const started = performance.now();
try {
  const out = report(await main(), started);
  mkdirSync(results, { recursive: true });
  writeFileSync(join(results, `${outName}.json`), `${JSON.stringify(out, null, 2)}\n`);
  // A run of an earlier build (--out server-probe-before) is shown first, for the comparison.
  const runs = [];
  if (outName === 'server-probe') {
    try {
      runs.push(JSON.parse(readFileSync(join(results, 'server-probe-before.json'), 'utf8')));
    } catch {}
  }
  runs.push(out);
  writeFileSync(join(results, `${outName}.md`), markdown(runs));
  console.log(JSON.stringify(out.phases, null, 2));
} finally {
  cleanup();
}
