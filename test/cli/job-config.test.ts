import { execFile, execFileSync } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadJobConfig } from '../../src/config/job-config.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer } from '../support/blockrep-server.js';
import { runCli, type CliResult } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The job configuration of `blockrep run` and the run of offline images: every kind of mistake
 * is named by file, line, column and path with what to write instead; a dry run changes
 * nothing; the event log is one parseable line per event and never holds the token.
 */
let dir: string;
let image: string;

beforeAll(async () => {
  dir = await tempDir('blockrep-jobs-');
  image = join(dir, 'archive.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '4M']);
  execFileSync('qemu-io', ['-f', 'qcow2', image, '-c', 'write -P 0x5a 0 1M'], { stdio: 'ignore' });
});

let n = 0;
async function configFile(text: string, name = `job${++n}.yaml`): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

/** The CONFIG_INVALID error loadJobConfig throws for `text`, as its message. */
async function mistake(text: string): Promise<{ message: string; issues: Array<{ line: number; column: number; path: string; message: string }> }> {
  const file = await configFile(text);
  try {
    await loadJobConfig(file);
  } catch (err) {
    if (!isBlockrepError(err)) throw err;
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.message).toContain(file);
    return { message: err.message, issues: (err.details as { issues: never[] }).issues };
  }
  throw new Error(`no error for:\n${text}`);
}

const repoLine = (name: string): string => `repository:\n  url: ${join(dir, name)}\n`;

describe('job configuration mistakes', () => {
  it('an unknown key: file, line, column, path, and the key it was probably meant to be', async () => {
    const e = await mistake(`${repoLine('r')}vms:\n  - name: web01\n    qpm: /run/web01.qmp\n`);
    expect(e.message).toMatch(/job\d+\.yaml:5:5 vms\[0\]\.qpm: unknown key "qpm" — did you mean "qmp"\?/);
    const snake = await mistake(`repository:\n  url: https://b.example\n  token_file: /t\nvms:\n  - {name: a, qmp: /x}\n`);
    expect(snake.message).toMatch(/:3:3 repository\.token_file: unknown key "token_file" — did you mean "tokenFile"\?/);
    const perVm = await mistake(`${repoLine('r')}vms:\n  - name: a\n    qmp: /x\n    bwlimit: 10M\n`);
    expect(perVm.message).toContain('vms[0].bwlimit: unknown key "bwlimit": the bandwidth limit is for the whole run (one link), set it in defaults.bwlimit');
  });

  it('a wrong type: what was expected, what was found, and an example to copy', async () => {
    const e = await mistake(`${repoLine('r')}vms:\n  - name: web01\n    qmp: 12\n`);
    expect(e.message).toMatch(/job\d+\.yaml:5:10 vms\[0\]\.qmp: expected a path to a QMP socket, got the number 12 — write e\.g\. qmp: \/run\/qemu\/web01\.qmp$/);
    const size = await mistake(`${repoLine('r')}defaults:\n  blockSize: 100K\nvms:\n  - {name: a, qmp: /x}\n`);
    expect(size.message).toMatch(/:4:14 defaults\.blockSize: expected a block size, a power of two from 4K to 16M, got the text "100K"/);
    const list = await mistake(`${repoLine('r')}vms: web01\n`);
    expect(list.message).toMatch(/:3:6 vms: expected a list of VMs, got the text "web01"/);
    const missing = await mistake(`vms:\n  - {name: a, qmp: /x}\n`);
    expect(missing.message).toMatch(/:1:1 repository: missing key "repository": expected a mapping with url/);
  });

  it('several mistakes are all reported, in the order of the file', async () => {
    const e = await mistake(`${repoLine('r')}parallel: many\nvms:\n  - name: a\n    qmp: /x\n    quiesce: sometimes\n    compress: yes please\n`);
    expect(e.issues.map((i) => [i.line, i.path])).toEqual([
      [3, 'parallel'],
      [7, 'vms[0].quiesce'],
      [8, 'vms[0].compress'],
    ]);
    expect(e.message).toMatch(/3 problems/);
    expect(e.issues[1]!.message).toBe('expected auto, require or off, got the text "sometimes" — write e.g. quiesce: auto');
  });

  it('a bad disk id, a VM that is neither live nor offline, two VMs of one name', async () => {
    const e = await mistake(`${repoLine('r')}vms:\n  - name: arch\n    images:\n      - path: a.qcow2\n        disk: "../etc"\n  - name: none\n  - name: arch\n    qmp: /x\n`);
    expect(e.message).toMatch(/:7:15 vms\[0\]\.images\[0\]\.disk: the disk id "arch\/\.\.\/etc" is invalid: it has a "\.\." segment/);
    expect(e.message).toMatch(/:8:5 vms\[1\]: give domain \(a running libvirt domain\), qmp \(the socket of a running QEMU VM\) or images/);
    expect(e.message).toMatch(/:9:11 vms\[2\]\.name: the name arch is used by vms\[0\] too/);
    const name = await mistake(`${repoLine('r')}vms:\n  - {name: "web 01", qmp: /x}\n`);
    expect(name.message).toMatch(/:4:12 vms\[0\]\.name: the VM name "web 01" cannot be the first part of a disk id/);
  });

  it('a bad retention policy: a misspelt rule, a negative count, an empty policy', async () => {
    const e = await mistake(`${repoLine('r')}defaults:\n  retention: {keepDialy: 7}\nvms:\n  - name: a\n    qmp: /x\n    retention:\n      keepDaily: -1\n  - name: b\n    qmp: /y\n    retention: {}\n`);
    expect(e.message).toMatch(/:4:15 defaults\.retention\.keepDialy: unknown key "keepDialy" — did you mean "keepDaily"\?/);
    expect(e.message).toMatch(/:9:18 vms\[0\]\.retention\.keepDaily: expected a whole number of days, 0 or more, got the number -1 — write e\.g\. keepDaily: 7/);
    expect(e.message).toMatch(/:12:16 vms\[1\]\.retention: an empty retention policy would remove every version but the latest/);
    // The empty-policy check is not repeated for a policy whose key is wrong.
    expect(e.issues).toHaveLength(3);
  });

  it('a token file that is missing, unreadable, or holds no token', async () => {
    const server = 'repository:\n  url: https://backup.example:8417\n  tokenFile: ';
    const vm = '\nvms:\n  - {name: a, qmp: /x}\n';
    const gone = await mistake(`${server}secrets/none${vm}`);
    expect(gone.message).toMatch(new RegExp(`:3:14 repository\\.tokenFile: cannot read ${dir}/secrets/none: it does not exist`));
    await writeFile(join(dir, 'not-a-token'), 'hello\n');
    const bad = await mistake(`${server}not-a-token${vm}`);
    expect(bad.message).toContain('repository.tokenFile: ');
    expect(bad.message).toContain('does not hold a blockrep access token');

    // Unreadable: mode 000, read by blockrep as a user without the power to override it (root
    // reads anything, so as root the CLI runs without CAP_DAC_OVERRIDE).
    const locked = join(dir, 'locked-token');
    await writeFile(locked, `brt_${'x'.repeat(43)}\n`);
    await chmod(locked, 0o000);
    const file = await configFile(`${server}locked-token${vm}`);
    const r = await runAsUnprivileged(['run', '--config', file, '--json']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.json).toMatchObject({ ok: false, code: 'CONFIG_INVALID' });
    expect(r.json.message).toMatch(new RegExp(`job\\d+\\.yaml:3:14 repository\\.tokenFile: cannot read ${locked}: permission denied`));
    expect(r.json.details.issues[0]).toMatchObject({ line: 3, column: 14, path: 'repository.tokenFile' });
  });

  it('a token file that is a device or too large is named, not read whole', async () => {
    const server = 'repository:\n  url: https://backup.example:8417\n  tokenFile: ';
    const zero = await mistake(`${server}/dev/zero\nvms:\n  - {name: a, qmp: /x}\n`);
    expect(zero.message).toMatch(/:3:14 repository\.tokenFile: cannot read \/dev\/zero: it is larger than 4096 bytes, so it is not a token file/);
  });

  it('resource limits: an alias bomb, a file over 1 MiB, more than 1000 VMs — exit 2 naming the file', async () => {
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++) levels.push(`${'abcdefghi'[i]}: &${'abcdefghi'[i]} [${Array(9).fill(`*${'abcdefghi'[i - 1]}`).join(', ')}]`);
    const bomb = await configFile(`${levels.join('\n')}\n${repoLine('r')}vms:\n  - {name: a, qmp: /x}\n`);
    const r = await runCli(['run', '--config', bomb, '--json', '--report', join(dir, 'bomb-report.json')]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.json).toMatchObject({ ok: false, code: 'CONFIG_INVALID', message: expect.stringContaining(bomb) });
    expect(r.json.message).toContain('aliases');

    const huge = await configFile(`${repoLine('r')}vms:\n  - {name: a, qmp: /x}\n${'#'.repeat(1 << 20)}\n`);
    const big = await runCli(['run', '--config', huge, '--json', '--report', join(dir, 'huge-report.json')]);
    expect(big.code, big.stderr).toBe(2);
    expect(big.json).toMatchObject({ ok: false, code: 'CONFIG_INVALID', message: expect.stringContaining(`${huge}: it is larger than 1048576 bytes`) });

    const many = await mistake(`${repoLine('r')}vms:\n${Array.from({ length: 1001 }, (_, i) => `  - {name: vm${i}, qmp: /x}`).join('\n')}\n`);
    expect(many.message).toContain('vms: 1001 VMs: a job configuration holds at most 1000');
  });

  it('a syntax error, an empty file, a missing file; JSON is accepted as YAML', async () => {
    const syntax = await mistake(`${repoLine('r')}vms: [\n  {name: a, qmp: /x}\n`);
    expect(syntax.issues[0]!.path).toBe('(syntax)');
    expect(syntax.message).toMatch(/not valid YAML/);
    const empty = await mistake('# nothing yet\n');
    expect(empty.message).toMatch(/:1:1 \(top level\): the file is empty/);
    const reportFile = join(dir, 'nope-report.json');
    const none = await runCli(['run', '--config', join(dir, 'nope.yaml'), '--report', reportFile]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(`cannot read the job configuration ${join(dir, 'nope.yaml')}: it does not exist`);
    // A run that could not start still leaves a report for the morning's monitor.
    expect(JSON.parse(await readFile(reportFile, 'utf8'))).toMatchObject({ ok: false, code: 'USAGE', message: expect.stringContaining('does not exist') });

    const json = await configFile(JSON.stringify({ repository: { url: 'repo-json' }, vms: [{ name: 'arch', images: ['archive.qcow2'] }] }), 'job.json');
    const config = await loadJobConfig(json);
    expect(config.repository.location).toBe(join(dir, 'repo-json'));
    expect(config.vms[0]).toMatchObject({ kind: 'image', images: [{ path: image, diskId: 'arch/archive' }] });
    const wrong = await mistake(JSON.stringify({ repository: { url: 'r' }, vms: [{ name: 'a', qmp: true }] }, null, 2));
    expect(wrong.message).toMatch(/:8:14 vms\[0\]\.qmp: expected a path to a QMP socket, got true/);
  });

  it('relative paths are relative to the config file, defaults apply unless a VM overrides them', async () => {
    await mkdir(join(dir, 'etc'), { recursive: true });
    const file = await configFile(
      '# nightly\nrepository:\n  url: ../repo-rel\ndefaults:\n  blockSize: 64K\n  bwlimit: 20M\n  quiesce: require\n  retention: {keepDaily: 7}\nparallel: 3\nvms:\n' +
        '  - name: web01\n    qmp: ../run/web01.qmp\n    disks: [disk1]\n    blockSize: 1M\n  - name: arch\n    compress: false\n    retention: {keepLast: 2}\n    images:\n      - path: ../archive.qcow2\n        disk: root\n        format: qcow2\n',
      'etc/nightly.yaml',
    );
    const c = await loadJobConfig(file);
    expect(c).toMatchObject({ parallel: 3, repository: { location: join(dir, 'repo-rel'), bwlimit: 20 << 20 } });
    expect(c.vms[0]).toMatchObject({ kind: 'live', name: 'web01', qmpSocket: join(dir, 'run/web01.qmp'), disks: ['disk1'], blockSize: 1 << 20, quiesce: 'require', compress: true, retention: { keepDaily: 7 } });
    expect(c.vms[1]).toMatchObject({ kind: 'image', compress: false, blockSize: 64 << 10, retention: { keepLast: 2 }, images: [{ path: image, diskId: 'arch/root', format: 'qcow2' }] });
    expect(c.vms[0]!.where('qmp')).toBe(`${file}:12:10 vms[0].qmp`);
  });

  it('repository.syncLevel: file or filesystem for a directory; refused for a server or S3, and a wrong value names the choices', async () => {
    const ok = await loadJobConfig(await configFile(`${repoLine('r')}  syncLevel: file\nvms:\n  - name: a\n    qmp: /x\n`));
    expect(ok.repository).toMatchObject({ syncLevel: 'file' });
    const remote = await mistake('repository:\n  url: https://backup.example:8417\n  syncLevel: file\nvms:\n  - name: a\n    qmp: /x\n');
    expect(remote.message).toContain('repository.syncLevel: syncLevel is for a repository in a directory');
    const wrong = await mistake(`${repoLine('r')}  syncLevel: none\nvms:\n  - name: a\n    qmp: /x\n`);
    expect(wrong.message).toContain('filesystem or file');
  });
});

describe('the shipped example and the systemd units', () => {
  const scripts = join(import.meta.dirname, '../../scripts');

  it('the example config (README, scripts/systemd/blockrep.yaml.example) is valid', async () => {
    const token = join(dir, 'example-token');
    await writeFile(token, `brt_${'a'.repeat(43)}\n`, { mode: 0o600 });
    const text = (await readFile(join(scripts, 'systemd/blockrep.yaml.example'), 'utf8')).replace('/etc/blockrep/token', token);
    const c = await loadJobConfig(await configFile(text, 'example.yaml'));
    expect(c).toMatchObject({ parallel: 2, repository: { location: 'https://backup.example:8417', tokenFile: token, bwlimit: 20 << 20 } });
    expect(c.vms.map((v) => [v.name, v.kind])).toEqual([
      ['web01', 'live'],
      ['db01', 'live'],
      ['archive', 'image'],
      ['mail01', 'libvirt'],
    ]);
    expect(c.vms[1]).toMatchObject({ disks: ['virtio1'], quiesce: 'require', retention: { keepLast: 3, keepDaily: 14, keepWeekly: 8 } });
    expect(c.vms[2]).toMatchObject({ blockSize: 1 << 20, images: [{ diskId: 'archive/archive' }, { diskId: 'archive/data', path: '/dev/vg0/archive-data', format: 'raw' }] });
  });

  it('install-systemd.sh --root installs units systemd accepts, and the example config once', async () => {
    const root = join(dir, 'sysroot');
    const install = (): string => execFileSync('bash', [join(scripts, 'install-systemd.sh'), '--root', root, '--bin', process.execPath], { encoding: 'utf8' });
    expect(install()).toContain('wrote');
    const service = await readFile(join(root, 'etc/systemd/system/blockrep-run.service'), 'utf8');
    expect(service).toContain(`ExecStart=${process.execPath} run --config /etc/blockrep/blockrep.yaml --report /var/lib/blockrep/last-run.json`);
    expect(service).toMatch(/^IOSchedulingClass=idle$/m);
    const timer = await readFile(join(root, 'etc/systemd/system/blockrep-run.timer'), 'utf8');
    expect(timer).toMatch(/^Persistent=true$/m);
    expect(timer).toMatch(/^RandomizedDelaySec=/m);
    expect((await stat(join(root, 'etc/blockrep/blockrep.yaml'))).mode & 0o777).toBe(0o600);
    // A second install keeps the administrator's config.
    await writeFile(join(root, 'etc/blockrep/blockrep.yaml'), '# mine\n');
    expect(install()).not.toContain('wrote');
    expect(await readFile(join(root, 'etc/blockrep/blockrep.yaml'), 'utf8')).toBe('# mine\n');
    const analyze = execFileSync('sh', ['-c', 'command -v systemd-analyze || true'], { encoding: 'utf8' }).trim();
    if (analyze !== '') execFileSync(analyze, ['verify', join(root, 'etc/systemd/system/blockrep-run.service'), join(root, 'etc/systemd/system/blockrep-run.timer')]);
  });
});

describe('blockrep run with offline images', () => {
  it('one image missing: the others are backed up, exit 13, the report names the failure, its code and where it is configured', async () => {
    const file = await configFile(
      `${repoLine('repo-partial')}defaults:\n  blockSize: 64K\nvms:\n  - name: arch\n    images: [archive.qcow2]\n  - name: lost\n    images:\n      - path: gone.qcow2\n`,
    );
    const reportFile = join(dir, 'partial-report.json');
    const r = await runCli(['run', '--config', file, '--json', '--report', reportFile]);
    expect(r.code, r.stderr).toBe(13);
    expect(r.json).toMatchObject({ ok: false, code: 'PARTIAL_FAILURE', summary: { vms: 2, ok: 1, failed: 1 } });
    expect(r.json.message).toContain('1 of 2 VM(s) failed: lost [IMAGE_NOT_FOUND]');
    const [arch, lost] = r.json.vms;
    expect(arch).toMatchObject({ vm: 'arch', status: 'ok', disks: [{ status: 'ok', disk: 'arch/archive', changedBlocks: 64 }] });
    expect(lost).toMatchObject({ vm: 'lost', status: 'failed', code: 'IMAGE_NOT_FOUND', disks: [{ status: 'failed', disk: 'lost/gone', code: 'IMAGE_NOT_FOUND' }] });
    expect(lost.message).toMatch(/vms\[1\]\.images\[0\]: /);
    // The report file is the same report, whole.
    expect(JSON.parse(await readFile(reportFile, 'utf8'))).toEqual(r.json);
    // No temporary file of the durable write is left (writeFileDurably names them `.<name>.tmp-<hex>`).
    expect((await readdir(dir)).filter((f) => f.startsWith('.partial-report.json.tmp-'))).toEqual([]);

    const text = await runCli(['run', '--config', file, '--only', 'lost']);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/^blockrep run: 0 of 1 VM\(s\) backed up, 1 failed/);
    expect(text.stdout).toMatch(/FAILED +lost \(image\)/);
    // The text log: one line per event, time first.
    const lines = text.stderr.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\S+Z info {2}run-start backing up 1 VM\(s\) from /);
    expect(lines).toContainEqual(expect.stringMatching(/ error vm-failed \[IMAGE_NOT_FOUND\] lost: failed: disk lost\/gone: /));
    const unknown = await runCli(['run', '--config', file, '--only', 'nobody', '--json']);
    expect(unknown.code).toBe(2);
    expect(unknown.json.message).toContain('has no VM of that name; its VMs: arch, lost');
  });

  it('run --help documents the options and the exit codes of a run', async () => {
    const r = await runCli(['run', '--help']);
    expect(r.code).toBe(0);
    for (const text of ['--config <file>', '--only <vm...>', '--dry-run', '--report <file>', '--log-format <format>', '--parallel <n>']) expect(r.stdout).toContain(text);
    expect(r.stdout).toMatch(/^ {2}13 {3}blockrep run: some VMs were backed up and some failed/m);
    expect(r.stdout).toMatch(/^ {2}1 {4}failure .*blockrep run: no VM could be backed up/m);
  });

  it('--dry-run checks images, sockets and the repository and changes nothing', async () => {
    const repo = join(dir, 'repo-dry');
    const ok = await configFile(`${repoLine('repo-dry')}vms:\n  - name: arch\n    images: [archive.qcow2]\n`);
    const first = await runCli(['run', '--config', ok, '--json']);
    expect(first.code, first.stderr).toBe(0);
    const before = await snapshot(repo);

    const file = await configFile(`${repoLine('repo-dry')}vms:\n  - name: arch\n    images: [archive.qcow2]\n  - name: web01\n    qmp: run/web01.qmp\n`);
    const r = await runCli(['run', '--config', file, '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(13);
    expect(r.json).toMatchObject({ dryRun: true, code: 'PARTIAL_FAILURE', repository: { status: 'ok' } });
    expect(r.json.vms[0]).toMatchObject({
      status: 'ok',
      checks: [
        { check: 'image', status: 'ok', message: expect.stringContaining('qcow2, 4194304 bytes') },
        { check: 'repository-access', status: 'ok', message: expect.stringContaining('arch/archive: latest version') },
      ],
    });
    expect(r.json.vms[1]).toMatchObject({ status: 'failed', code: 'QMP_UNAVAILABLE', checks: [{ check: 'qmp-socket', status: 'failed' }] });
    expect(r.json.vms[1].message).toMatch(new RegExp(`job\\d+\\.yaml:7:10 vms\\[1\\]\\.qmp: no QMP socket at ${dir}/run/web01\\.qmp`));
    expect(await snapshot(repo)).toEqual(before);

    // A repository that does not exist yet is not created by a dry run.
    const fresh = await configFile(`${repoLine('repo-not-yet')}vms:\n  - name: arch\n    images: [archive.qcow2]\n`);
    const dry = await runCli(['run', '--config', fresh, '--dry-run', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.json.repository.note).toContain('the first run creates it');
    await expect(stat(join(dir, 'repo-not-yet'))).rejects.toThrow();
  });
});

describe('blockrep run against a repository server', () => {
  it('logs one JSON line per event, never the token; a dry run with a wrong token fails the repository check', async () => {
    const root = join(dir, 'served');
    const tokensFile = join(dir, 'tokens.json');
    const { secret } = await createToken(tokensFile, { name: 'nightly', disks: ['*'], rights: ['read', 'write', 'admin'] });
    await writeFile(join(dir, 'token'), `${secret}\n`, { mode: 0o600 });
    const server = await startServer({ root, tokensFile });
    try {
      const file = await configFile(
        `repository:\n  url: ${server.url}\n  tokenFile: token\ndefaults:\n  blockSize: 64K\n  retention: {keepLast: 1}\nvms:\n  - name: arch\n    images: [archive.qcow2]\n`,
      );
      const env = { BLOCKREP_CACHE_DIR: join(dir, 'cache') };
      const reportFile = join(dir, 'served-report.json');
      for (let i = 0; i < 2; i++) {
        const r = await runCli(['run', '--config', file, '--json', '--log-format', 'json', '--report', reportFile], { env });
        expect(r.code, r.stderr).toBe(0);
        const events = r.stderr.trimEnd().split('\n').map((line) => JSON.parse(line) as { time: string; level: string; event: string });
        expect(events.map((e) => e.event)).toEqual(['run-start', 'repository', 'vm-start', 'disk-done', 'prune-done', 'vm-done', 'run-done']);
        for (const e of events) expect(e.time).toMatch(/^\d{4}-\d\d-\d\dT/);
        expect(events[4]).toMatchObject({ data: { versionsKept: 1, versionsRemoved: i } });
        for (const out of [r.stdout, r.stderr, await readFile(reportFile, 'utf8')]) {
          expect(out).not.toContain(secret);
          expect(out).not.toContain(secret.slice(4, 20));
        }
      }
      const other = await createToken(join(dir, 'other-tokens.json'), { name: 'other', disks: ['*'], rights: ['read'] });
      await writeFile(join(dir, 'token'), `${other.secret}\n`);
      const denied = await runCli(['run', '--config', file, '--dry-run', '--json', '--log-format', 'json'], { env });
      expect(denied.code).toBe(1);
      expect(denied.json).toMatchObject({ ok: false, code: 'RUN_FAILED', repository: { status: 'failed', code: 'UNAUTHORIZED' }, vms: [{ status: 'not-started' }] });
      expect(denied.stdout + denied.stderr).not.toContain(other.secret);
      for (const line of denied.stderr.trimEnd().split('\n')) JSON.parse(line);
    } finally {
      await server.stop();
    }
  });
});

/** Every file under `root` with its size and modification time. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else {
        const s = await stat(p);
        out[p.slice(root.length)] = `${s.size} ${s.mtimeMs}`;
      }
    }
  };
  await walk(root);
  return out;
}

/** The CLI as a user who cannot read others' files: as root, without CAP_DAC_OVERRIDE. */
function runAsUnprivileged(args: string[]): Promise<CliResult> {
  if (process.getuid?.() !== 0) return runCli(args);
  const bin = join(import.meta.dirname, '../../bin/blockrep.js');
  const drop = ['--bounding-set=-dac_override,-dac_read_search', '--inh-caps=-dac_override,-dac_read_search', '--'];
  return new Promise((resolve) => {
    execFile('setpriv', [...drop, process.execPath, bin, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, json });
    });
  });
}
