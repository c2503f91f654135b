/**
 * S3 benchmark: blockrep against restic, both writing the same image into a real Ceph RGW on
 * loopback (scripts/s3/start-rgw.sh): a first backup, then a nightly 1 % change. Each tool gets
 * a fresh RGW of its own; a counting proxy in front of it counts every request by kind for both
 * alike (blockrep's own `requests` count is reported beside it as a cross-check). Also measures
 * the one question behind packing: how fast this RGW takes small objects against large ones.
 *
 *   npm run bench:s3   (node bench/s3-bench.mjs [--size 4G] [--out bench/results/s3])
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { GiB, MiB, arg, changeImage, makeImage, repoRoot } from './lib/workload.mjs';

const size = parseSize(arg('--size', '4G'));
const out = arg('--out', join(repoRoot, 'bench/results/s3'));
const work = mkdtempSync(join(tmpdir(), 'blockrep-s3-bench-'));
const image = join(work, 'disk.img');
const pristine = join(work, 'pristine.img');
const started = new Date();
/** The commit measured: read at the start, since the tree may move on during a long run. */
const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot, encoding: 'utf8' }).trim();

function parseSize(text) {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) throw new Error(`bad size ${text}`);
  return Number(m[1]) * { '': 1, K: 1024, M: MiB, G: GiB }[m[2].toUpperCase()];
}

/** A fresh RGW (memstore sized for one tool's data) and a counting proxy in front of it. */
async function startServer(name) {
  const dir = join(work, `rgw-${name}`);
  const env = { ...process.env, S3_DIR: dir, S3_ENV_FILE: join(work, `${name}.env`), S3_MEM_BYTES: String(size + 2 * GiB), S3_BUCKET: 'bench' };
  execFileSync('bash', [join(repoRoot, 'scripts/s3/start-rgw.sh')], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  const vars = Object.fromEntries(
    readFileSync(join(work, `${name}.env`), 'utf8')
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  const target = new URL(vars.S3_ENDPOINT);
  const counts = {};
  const proxy = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const bucketLevel = url.pathname.split('/').filter(Boolean).length <= 1;
    const kind =
      req.method === 'GET' && bucketLevel && (url.searchParams.has('list-type') || url.searchParams.has('prefix') || url.search === '')
        ? 'LIST'
        : req.method === 'PUT' && req.headers['x-amz-copy-source']
          ? 'COPY'
          : req.method === 'POST' && url.searchParams.has('delete')
            ? 'DELETE'
            : req.method;
    counts[kind] = (counts[kind] ?? 0) + 1;
    const fwd = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    fwd.on('error', () => req.socket.destroy());
    req.pipe(fwd);
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', () => r(undefined)));
  const endpoint = `http://127.0.0.1:${/** @type {import("node:net").AddressInfo} */ (proxy.address()).port}`;
  return {
    endpoint,
    env: { AWS_ACCESS_KEY_ID: vars.S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY: vars.S3_SECRET_KEY, AWS_REGION: vars.S3_REGION, AWS_ENDPOINT_URL: endpoint },
    take() {
      const c = { ...counts };
      for (const k of Object.keys(counts)) delete counts[k];
      return c;
    },
    async stop() {
      await new Promise((r) => proxy.close(() => r(undefined)));
      execFileSync('bash', [join(repoRoot, 'scripts/s3/stop-rgw.sh'), dir], { stdio: 'ignore' });
    },
  };
}

/** Runs a tool as its own process; asynchronous, since the counting proxy lives in this one. */
function timed(cmd, args, env) {
  const t = process.hrtime.bigint();
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d.slice(-4000)));
  return new Promise((resolve, reject) => {
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t) / 1e9;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stdout.slice(-2000)}${stderr.slice(-2000)}`));
      else resolve({ seconds, stdout });
    });
  });
}

const total = (c) => Object.values(c).reduce((a, b) => a + b, 0);

async function runBlockrep(blockSize) {
  const s = await startServer('blockrep');
  const env = { ...s.env, BLOCKREP_CACHE_DIR: join(work, `blockrep-cache-${blockSize}`) };
  const cli = join(repoRoot, 'bin/blockrep.js');
  const runs = [];
  for (const phase of ['first', 'nightly']) {
    if (phase === 'nightly') changeImage(image, size, 42);
    const r = await timed(process.execPath, [cli, 'backup', image, '--repo', 's3://bench/blockrep', '--disk', 'bench', '--block-size', blockSize, '--json'], env);
    const report = JSON.parse(r.stdout);
    runs.push({ blockSize, phase, seconds: r.seconds, requests: s.take(), ownCount: report.requests, bytesSent: report.disks[0].bytesSent, newChunks: report.disks[0].newChunks, changedBlocks: report.disks[0].changedBlocks });
  }
  await s.stop();
  return runs;
}

async function runRestic() {
  const s = await startServer('restic');
  const env = { ...s.env, RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: join(work, 'restic-cache'), RESTIC_REPOSITORY: `s3:${s.endpoint}/bench/restic` };
  await timed('restic', ['init'], env);
  s.take();
  const runs = [];
  for (const phase of ['first', 'nightly']) {
    if (phase === 'nightly') changeImage(image, size, 42);
    const r = await timed('restic', ['backup', '--json', '--host', 'bench', image], env);
    const summary = r.stdout
      .split('\n')
      .filter((l) => l.includes('"summary"'))
      .map((l) => JSON.parse(l))[0];
    runs.push({ phase, seconds: r.seconds, requests: s.take(), bytesSent: summary?.data_added, newChunks: summary?.data_blobs });
  }
  await s.stop();
  return runs;
}

/** PUT throughput of 256 KiB objects (one per chunk) against 16 MiB ones (a pack of 64), same bytes. */
async function packProbe() {
  const s = await startServer('probe');
  const { S3Client, PutObjectCommand } = await import('@aws-sdk/client-s3');
  const { Agent } = await import('node:http');
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  const client = new S3Client({ endpoint: s.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: s.env.AWS_ACCESS_KEY_ID, secretAccessKey: s.env.AWS_SECRET_ACCESS_KEY }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED', requestHandler: { httpAgent: new Agent({ keepAlive: true, maxSockets: 16 }) } });
  const bytes = 256 * MiB;
  const rows = [];
  for (const objectBytes of [256 * 1024, 4 * MiB, 16 * MiB]) {
    const body = Buffer.alloc(objectBytes, 7);
    const n = bytes / objectBytes;
    let next = 0;
    const t = process.hrtime.bigint();
    await Promise.all(Array.from({ length: 16 }, async () => {
      while (next < n) {
        const i = next++;
        await client.send(new PutObjectCommand({ Bucket: 'bench', Key: `probe/${objectBytes}/${i}`, Body: body }));
      }
    }));
    const seconds = Number(process.hrtime.bigint() - t) / 1e9;
    rows.push({ objectBytes, objects: n, seconds, mibPerSecond: bytes / MiB / seconds, requests: s.take() });
  }
  client.destroy();
  await s.stop();
  return rows;
}

mkdirSync(join(repoRoot, 'bench/results'), { recursive: true });
process.stderr.write(`making a ${size / GiB} GiB image…\n`);
makeImage(image, size);
copyFileSync(image, pristine);
const load0 = loadavg();
const blockrepRuns = [];
for (const blockSize of ['256K', '1M']) {
  process.stderr.write(`blockrep, ${blockSize} blocks…\n`);
  blockrepRuns.push(...(await runBlockrep(blockSize)));
  copyFileSync(pristine, image);
}
process.stderr.write('restic…\n');
const resticRuns = await runRestic();
process.stderr.write('object sizes…\n');
const probe = await packProbe();
const load1 = loadavg();
rmSync(work, { recursive: true, force: true });

const result = {
  startedAt: started.toISOString(),
  seconds: (Date.now() - started.getTime()) / 1000,
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: totalmem() / GiB, node: process.version, loadStart: load0, loadEnd: load1 },
  commit: head,
  restic: spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.trim(),
  imageBytes: size,
  blockrep: blockrepRuns,
  restic_runs: resticRuns,
  objectSizes: probe,
};
writeFileSync(`${out}.json`, `${JSON.stringify(result, null, 2)}\n`);

const fmtReq = (c) => Object.entries(c).sort().map(([k, v]) => `${k} ${v}`).join(', ');
const lines = [
  '# S3 benchmark: blockrep against restic into a Ceph RGW',
  '',
  `Generated by \`npm run bench:s3\` (bench/s3-bench.mjs) on ${result.startedAt} in ${Math.round(result.seconds)} s, commit ${head}.`,
  `Machine: ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memGiB.toFixed(1)} GiB, Node ${process.version}; ${result.restic}.`,
  `**Shared machine**: load average ${load0.map((x) => x.toFixed(2)).join(' / ')} at the start, ${load1.map((x) => x.toFixed(2)).join(' / ')} at the end (other engineers' work): times are indicative, request counts are exact.`,
  '',
  '## Setup',
  '',
  `- Image: ${(size / GiB).toFixed(2)} GiB raw (bench/lib/workload.mjs: 60 % random, 20 % text, 20 % zeros in 8 MiB stripes); nightly change: 1 % (seed 42), the same bytes for both tools.`,
  '- Server: a fresh single-node Ceph RGW per tool (scripts/s3/start-rgw.sh, memstore OSD, beast frontend) on loopback, with a counting HTTP proxy in front of it; every request of each tool goes through it.',
  '- blockrep: `blockrep backup IMAGE --repo s3://bench/blockrep --disk bench --block-size B --json` with B = 256K (the default) and 1M, each into a fresh RGW; one object per chunk; endpoint from AWS_ENDPOINT_URL.',
  '- restic: `restic -r s3:http://127.0.0.1:PORT/bench/restic backup IMAGE` (content-defined chunks packed into pack files), after `restic init` (not counted).',
  '',
  '## Results',
  '',
  '| tool | run | wall s | requests (proxy) | by kind | blockrep\'s own count | bytes added |',
  '|---|---|---|---|---|---|---|',
  ...blockrepRuns.map((r) => `| blockrep ${r.blockSize} | ${r.phase} | ${r.seconds.toFixed(1)} | ${total(r.requests)} | ${fmtReq(r.requests)} | ${fmtReq(r.ownCount)} | ${(r.bytesSent / 1e6).toFixed(1)} MB in ${r.newChunks} chunks |`),
  ...resticRuns.map((r) => `| restic | ${r.phase} | ${r.seconds.toFixed(1)} | ${total(r.requests)} | ${fmtReq(r.requests)} | – | ${((r.bytesSent ?? 0) / 1e6).toFixed(1)} MB in ${r.newChunks} blobs |`),
  '',
  '## Object size on this RGW (the packing question)',
  '',
  '256 MiB of PUTs, 16 at a time, as objects of each size:',
  '',
  '| object size | objects | wall s | MiB/s |',
  '|---|---|---|---|',
  ...probe.map((p) => `| ${p.objectBytes >= MiB ? `${p.objectBytes / MiB} MiB` : `${p.objectBytes / 1024} KiB`} | ${p.objects} | ${p.seconds.toFixed(2)} | ${p.mibPerSecond.toFixed(1)} |`),
  '',
];
writeFileSync(`${out}.md`, lines.join('\n'));
process.stdout.write(lines.join('\n'));
