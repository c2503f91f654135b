import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { CompressStream } from 'zstd-napi';
import { startServer } from '../support/blockrep-server.js';
import { openTestRepo, repoKinds, type TestRepo } from '../support/repo-kinds.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The command-line contracts of design.md, end to end through the built CLI: JSON reports,
 * exit codes, damage detection and refusals that leave no version behind — with the repository
 * in a local directory and behind a real `blockrep serve` (repo-kinds.ts).
 */
let base: string;
const qemuIo = (file: string, cmd: string): void => {
  execFileSync('qemu-io', ['-f', 'qcow2', file, '-c', cmd], { stdio: 'ignore' });
};

beforeAll(async () => {
  base = await tempDir();
});

describe.each(repoKinds)('with a $name repository', (kind) => {
  let dir: string;
  let img: string;

  beforeAll(async () => {
    dir = join(base, kind.name);
    await mkdir(dir, { recursive: true });
    img = join(dir, 'web01.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '24M']);
    qemuIo(img, 'write -P 0x11 0 4M');
    qemuIo(img, 'write -P 0x22 8M 2M');
    qemuIo(img, 'write -z 12M 1M');
  });

  const openRepo = (name: string): Promise<TestRepo> => openTestRepo(kind, join(dir, name));
  const cli = (repo: TestRepo, args: string[]) => runCli([...args, ...repo.args], { env: repo.env });

  describe('backup --json', () => {
    it('prints the report of design.md and stores nothing new when nothing changed', async () => {
      const repo = await openRepo('repo-json');
      const first = await cli(repo, ['backup', img, '--block-size', '64K', '--json']);
      expect(first.code, first.stderr).toBe(0);
      expect(first.json).toMatchObject({ ok: true, durationMs: expect.any(Number) });
      const d = first.json.disks[0];
      expect(Object.keys(d)).toEqual(expect.arrayContaining(['disk', 'version', 'imageBytes', 'blockSize', 'blocks', 'changedBlocks', 'zeroBlocks', 'bytesRead', 'bytesSent', 'durationMs']));
      expect(d).toMatchObject({ disk: 'web01', imageBytes: 24 << 20, blockSize: 65536, blocks: 384, changedBlocks: 384 });
      // 6 MiB of data in 96 blocks of two patterns: two distinct chunks, the rest zero.
      expect(d.zeroBlocks).toBe(384 - 96);
      expect(d.newChunks).toBe(2);

      const second = await cli(repo, ['backup', img, '--block-size', '64K', '--json']);
      expect(second.code).toBe(0);
      const d2 = second.json.disks[0];
      expect(d2).toMatchObject({ changedBlocks: 0, newChunks: 0, parentVersion: d.version });
      const manifests = await readdir(join(repo.root, 'disks', 'web01'));
      const manifestBytes = (await readFile(join(repo.root, 'disks', 'web01', `${d2.version}.manifest`))).length;
      expect(manifests).toHaveLength(2);
      if (kind.name === 'local') {
        expect(d2.bytesSent).toBe(manifestBytes);
      } else {
        // Over the network a nightly manifest travels as a delta: it grows with the change.
        expect(d2.bytesSent).toBeLessThan(1024);
        expect(manifestBytes).toBeGreaterThan(15_000);
      }

      qemuIo(img, 'write -P 0x33 100k 4k');
      const third = await cli(repo, ['backup', img, '--block-size', '64K', '--json']);
      expect(third.json.disks[0]).toMatchObject({ changedBlocks: 1, newChunks: 1 });
      // One changed 64K block of a pattern compresses to less than a patch would take: the
      // client sends whichever is smaller, plus the manifest delta.
      if (kind.name !== 'local') expect(third.json.disks[0].bytesSent).toBeLessThan(2048);
      const verify = await cli(repo, ['verify', '--json']);
      expect(verify.json).toMatchObject({ ok: true, versions: 3 });
    });

    it('fails with a JSON object, a code and a non-zero exit', async () => {
      const r = await cli(await openRepo('repo-x'), ['backup', join(dir, 'missing.img'), '--json']);
      expect(r.code).toBe(3);
      expect(r.json).toMatchObject({ ok: false, code: 'IMAGE_NOT_FOUND', message: expect.stringContaining('missing.img') });
    });

    it('rejects bad arguments as usage errors', async () => {
      const repo = await openRepo('repo-usage');
      expect((await cli(repo, ['backup', img, '--block-size', '3000'])).code).toBe(2);
      expect((await cli(repo, ['backup', img, '--disk', '../etc'])).code).toBe(2);
      const r = await cli(repo, ['backup', img, '--disk', 'a//b', '--json']);
      expect(r.json).toMatchObject({ ok: false, code: 'INVALID_DISK_ID' });
      expect((await cli(repo, ['restore', '--disk', 'x'])).code).toBe(2); // --to missing
      // A disk id is one file name in the repository, each "/" escaped to 3 bytes: the longest
      // (224 bytes stored, plus the lock's and gc's suffixes) works, one more byte is refused early.
      const longest = `${Array.from({ length: 12 }, (_, i) => String.fromCharCode(97 + i).repeat(15)).join('/')}/${'m'.repeat(8)}`;
      expect(longest.length + 2 * 12).toBe(224);
      const atLimit = await cli(repo, ['backup', img, '--disk', longest, '--json']);
      expect(atLimit.code, atLimit.stderr).toBe(0);
      expect((await cli(repo, ['list', '--json'])).json.disks.map((d: { disk: string }) => d.disk)).toContain(longest);
      for (const tooLong of [longest.replace(/m{4}$/, 'm/mm'), `${'a/'.repeat(99)}a`]) {
        const refused = await cli(repo, ['backup', img, '--disk', tooLong, '--json']);
        expect(refused.code, refused.stderr).toBe(2);
        expect(refused.json).toMatchObject({ ok: false, code: 'INVALID_DISK_ID', message: expect.stringContaining('more than 224') });
      }
      expect((await runCli(['frobnicate'])).code).toBe(2);
    });
  });

  describe('restore, verify and list', () => {
    it('restores raw and qcow2 bit-exact and refuses to overwrite without --force', async () => {
      const repo = await openRepo('repo-restore');
      const b = await cli(repo, ['backup', img, '--disk', 'vm/vda', '--json']);
      expect(b.code, b.stderr).toBe(0);
      const raw = join(dir, 'restored.raw');
      const r1 = await cli(repo, ['restore', '--disk', 'vm/vda', '--to', raw, '--json']);
      expect(r1.code, r1.stderr).toBe(0);
      expect(r1.json).toMatchObject({ ok: true, disk: 'vm/vda', version: b.json.disks[0].version });
      execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', img, raw]);
      const q = join(dir, 'restored.qcow2');
      expect((await cli(repo, ['restore', '--disk', 'vm/vda', '--to', q, '--format', 'qcow2'])).code).toBe(0);
      execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', img, q]);
      execFileSync('qemu-img', ['check', '-q', q]);

      const again = await cli(repo, ['restore', '--disk', 'vm/vda', '--to', raw]);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/already exists.*--force/);
      expect((await cli(repo, ['restore', '--disk', 'vm/vda', '--to', raw, '--force'])).code).toBe(0);
      expect((await cli(repo, ['restore', '--disk', 'vm/nope', '--to', join(dir, 'n.raw')])).code).toBe(3);
      expect((await cli(repo, ['restore', '--disk', 'vm/vda', '--version', '20200101T000000.000Z-000000', '--to', join(dir, 'n.raw')])).code).toBe(3);

      const list = await cli(repo, ['list', '--json']);
      expect(list.json.disks).toEqual([{ disk: 'vm/vda', versions: [expect.objectContaining({ version: b.json.disks[0].version, imageBytes: 24 << 20 })] }]);
    });

    it('names the disk, version and block of a damaged chunk; restore of that version fails, another succeeds', async () => {
      const repo = await openRepo('repo-damage');
      const a = join(dir, 'a.qcow2');
      const bImg = join(dir, 'b.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', a, '4M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', bImg, '4M']);
      qemuIo(a, 'write -P 0x01 0 1M');
      qemuIo(a, 'write -P 0x05 2M 1M');
      qemuIo(bImg, 'write -P 0x02 0 1M');
      const backup = await cli(repo, ['backup', a, bImg, '--block-size', '1M', '--json']);
      expect(backup.code, backup.stderr).toBe(0);
      expect((await cli(repo, ['verify'])).code).toBe(0);

      // Flip one byte in the chunk of disk a's block 2.
      const chunkOf = async (disk: string, block: number): Promise<string> => {
        const version = backup.json.disks.find((d: { disk: string }) => d.disk === disk).version;
        const m = await readFile(join(repo.root, 'disks', disk, `${version}.manifest`));
        const headerBytes = m.readUInt32BE(8);
        return m.toString('hex', headerBytes + block * 40 + 8, headerBytes + block * 40 + 40);
      };
      const id = await chunkOf('a', 2);
      const path = join(repo.root, 'chunks', id.slice(0, 2), id);
      const blob = await readFile(path);
      blob[blob.length - 1]! ^= 0x40;
      await writeFile(path, blob);

      const v = await cli(repo, ['verify', '--json']);
      expect(v.code).toBe(4);
      expect(v.json).toMatchObject({ ok: false, code: 'VERIFY_FAILED' });
      expect(v.json.damage).toEqual([expect.objectContaining({ disk: 'a', version: backup.json.disks[0].version, block: 2, chunk: id, code: 'CHUNK_CORRUPT' })]);
      const text = await cli(repo, ['verify']);
      expect(text.stdout).toMatch(/DAMAGED disk a version \S+ block 2/);

      const bad = await cli(repo, ['restore', '--disk', 'a', '--to', join(dir, 'a.raw')]);
      expect(bad.code).toBe(4);
      expect(bad.stderr).toMatch(/block 2/);
      expect((await readdir(dir)).filter((f) => f.includes('a.raw'))).toEqual([]);
      const good = await cli(repo, ['restore', '--disk', 'b', '--to', join(dir, 'b.raw')]);
      expect(good.code, good.stderr).toBe(0);
      execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', bImg, join(dir, 'b.raw')]);
    });
  });

  describe('output when stdout is not a terminal', () => {
    it('prints no progress and nothing on stderr on success', async () => {
      const r = await cli(await openRepo('repo-quiet'), ['backup', img]);
      expect(r.code).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).not.toMatch(/\r|\x1b\[/);
      expect(r.stdout).toMatch(/disk web01: version \S+ \(first version\)/);
    });
  });

  describe('block size', () => {
    it('defaults to 256K for a new disk and then keeps the disk’s block size', async () => {
      const repo = await openRepo('repo-bs');
      const first = await cli(repo, ['backup', img, '--block-size', '64K', '--json']);
      expect(first.json.disks[0].blockSize).toBe(65536);
      const second = await cli(repo, ['backup', img, '--json']);
      expect(second.json.disks[0]).toMatchObject({ blockSize: 65536, changedBlocks: 0 });
      const other = await cli(repo, ['backup', img, '--disk', 'fresh', '--json']);
      expect(other.json.disks[0].blockSize).toBe(256 * 1024);
    });
  });
  describe('--bwlimit', () => {
    it('holds a backup and a restore to the given rate', async () => {
      const raw = join(dir, 'random.img');
      await writeFile(raw, randomBytes(6 << 20)); // incompressible: 6 MiB stored
      const repo = await openRepo('repo-bw');
      const b = await cli(repo, ['backup', raw, '--bwlimit', '2M', '--json']);
      expect(b.code, b.stderr).toBe(0);
      // The rate over the backup's own duration (start-up excluded) must not exceed the limit;
      // a floor far below it only guards against a limiter that stalls.
      const rate = b.json.disks[0].bytesSent / (b.json.durationMs / 1000);
      expect(rate).toBeLessThanOrEqual(2 * 1024 * 1024 * 1.05);
      expect(rate).toBeGreaterThan(2 * 1024 * 1024 * 0.4);

      const r = await cli(repo, ['restore', '--disk', 'random', '--to', join(dir, 'random.out'), '--bwlimit', '3M', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.bytesFetched / (r.json.durationMs / 1000)).toBeLessThanOrEqual(3 * 1024 * 1024 * 1.05);
      expect((await cli(repo, ['list', '--bwlimit', 'fast'])).code).toBe(2);
    });
  });
});

describe('arguments that would do something else than asked', () => {
  it('--repo "" is refused (it would make a repository in the working directory)', async () => {
    const cwd = join(base, 'cwd');
    await mkdir(cwd, { recursive: true });
    const img = join(cwd, 'small.img');
    await writeFile(img, randomBytes(64 * 1024));
    for (const args of [['backup', img], ['list']]) {
      const r = await runCli([...args, '--repo', '', '--json'], { cwd });
      expect(r.code, r.stderr).toBe(2);
      expect(r.json).toMatchObject({ ok: false, code: 'USAGE', message: expect.stringContaining('--repo') });
    }
    expect(await readdir(cwd)).toEqual(['small.img']);
  });

  it('an image named .qcow2 without a qcow2 header is backed up as raw, with a warning naming it', async () => {
    const dir = join(base, 'misnamed');
    await mkdir(dir, { recursive: true });
    const img = join(dir, 'data.qcow2');
    await writeFile(img, randomBytes(128 * 1024));
    const r = await runCli(['backup', img, '--repo', join(dir, 'repo'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.warnings).toEqual([expect.stringContaining(`${img} is named .qcow2 but has no qcow2 header: backed up as a raw image`)]);
    expect(r.stderr).toContain(`blockrep: warning: ${img} is named .qcow2`);
    const text = await runCli(['backup', img, '--repo', join(dir, 'repo')]);
    expect(text.stderr).toContain('backed up as a raw image');
    const said = await runCli(['backup', img, '--repo', join(dir, 'repo'), '--format', 'raw', '--json']);
    expect(said.code, said.stderr).toBe(0);
    expect(said.json.warnings).toBeUndefined();
    expect(said.stderr).toBe('');
  });

  it('an https:// URL to a plain-HTTP blockrep serve: unavailable (exit 12), saying to use http://', async () => {
    const dir = join(base, 'plain-http');
    await mkdir(dir, { recursive: true });
    const server = await startServer({ root: join(dir, 'repo') });
    try {
      const tls = server.url.replace(/^http:/, 'https:');
      const r = await runCli(['list', '--repo', tls, '--json']);
      expect(r.code, r.stderr).toBe(12);
      expect(r.json).toMatchObject({ ok: false, code: 'UNAVAILABLE', message: expect.stringContaining(`does not speak TLS`) });
      expect(r.json.message).toContain(`use ${server.url}`);
      expect(r.json.message).not.toMatch(/certificate/);
    } finally {
      await server.stop();
    }
  });

  it('--token-file /dev/zero is a usage error that says why, read no further than a token file can be', async () => {
    const r = await runCli(['list', '--repo', 'http://127.0.0.1:9', '--token-file', '/dev/zero', '--json']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.json).toMatchObject({ ok: false, code: 'USAGE', message: 'cannot read --token-file /dev/zero: it is larger than 4096 bytes, so it is not a token file' });
  });
});

describe('file modes', () => {
  /** Every file and folder under `root` with its permission bits, relative names sorted. */
  async function modes(root: string): Promise<Array<[string, number]>> {
    const out: Array<[string, number]> = [['.', (await stat(root)).mode & 0o7777]];
    for (const entry of await readdir(root, { recursive: true })) out.push([entry, (await stat(join(root, entry))).mode & 0o7777]);
    return out.sort();
  }
  const umask0 = (args: string[]) => {
    const bin = fileURLToPath(new URL('../../bin/blockrep.js', import.meta.url));
    execFileSync('sh', ['-c', 'umask 000 && exec "$@"', 'sh', process.execPath, bin, ...args], { stdio: 'ignore' });
  };

  it('a repository is readable by its owner only, whatever the umask; an older one with open modes keeps working', async () => {
    const dir = join(base, 'modes');
    await mkdir(dir, { recursive: true });
    const img = join(dir, 'disk.img');
    await writeFile(img, randomBytes(256 * 1024), { mode: 0o600 });
    const repo = join(dir, 'repo');
    const cache = join(dir, 'cache');
    umask0(['backup', img, '--repo', repo, '--block-size', '64K']);
    const all = await modes(repo);
    expect(all.length).toBeGreaterThan(5);
    for (const [name, mode] of all) {
      const isDir = (await stat(join(repo, name))).isDirectory();
      expect([name, mode]).toEqual([name, isDir ? 0o700 : 0o600]);
    }
    // The restored image of a 0600 source is 0600 too, with umask 000.
    umask0(['restore', '--repo', repo, '--disk', 'disk', '--to', join(dir, 'out.img')]);
    expect((await stat(join(dir, 'out.img'))).mode & 0o7777).toBe(0o600);

    // A repository written before (folders 0755, files 0644) is read and written as before.
    for (const [name] of all) await chmod(join(repo, name), (await stat(join(repo, name))).isDirectory() ? 0o755 : 0o644);
    await writeFile(img, randomBytes(256 * 1024));
    const again = await runCli(['backup', img, '--repo', repo, '--block-size', '64K', '--json'], { env: { BLOCKREP_CACHE_DIR: cache } });
    expect(again.code, again.stderr).toBe(0);
    expect((await runCli(['verify', '--repo', repo, '--json'])).json).toMatchObject({ ok: true, versions: 2 });
  });
});

describe('a hostile repository', () => {
  /** A zstd frame of `bytes` zeros, made in pieces (never the whole in memory), without a content size. */
  async function zstdOfZeros(bytes: number): Promise<Buffer> {
    const out: Buffer[] = [];
    const stream = new CompressStream();
    stream.on('data', (d: Buffer) => out.push(d));
    const piece = Buffer.alloc(1 << 20);
    for (let done = 0; done < bytes; done += piece.length) {
      if (!stream.write(piece)) await new Promise((resolve) => stream.once('drain', resolve));
    }
    await new Promise((resolve) => stream.end(resolve));
    return Buffer.concat(out);
  }

  /** The CLI under /usr/bin/time: its result and its peak resident memory in bytes. */
  function cliWithPeakRss(args: string[]): Promise<{ code: number; json: any; stderr: string; maxRssBytes: number }> {
    const bin = fileURLToPath(new URL('../../bin/blockrep.js', import.meta.url));
    return new Promise((resolve) => {
      execFile('/usr/bin/time', ['-f', 'MAXRSS %M', process.execPath, bin, ...args], { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        const rss = /MAXRSS (\d+)/.exec(stderr);
        let json: any;
        try {
          json = JSON.parse(stdout);
        } catch {
          json = undefined;
        }
        resolve({ code: err ? Number(err.code) : 0, json, stderr, maxRssBytes: rss ? Number(rss[1]) * 1024 : Number.NaN });
      });
    });
  }

  it('a 64K chunk that decompresses to 1 GiB: verify and restore fail with CHUNK_CORRUPT in little memory', async () => {
    const dir = join(base, 'bomb');
    await mkdir(dir, { recursive: true });
    const img = join(dir, 'disk.img');
    await writeFile(img, randomBytes(64 * 1024));
    const repo = join(dir, 'repo');
    const b = await runCli(['backup', img, '--repo', repo, '--block-size', '64K', '--json']);
    expect(b.code, b.stderr).toBe(0);
    const [prefix] = await readdir(join(repo, 'chunks'));
    const [id] = await readdir(join(repo, 'chunks', prefix!));
    // A blob whose header claims one block (64 KiB) and whose zstd payload holds 1 GiB.
    const payload = await zstdOfZeros(1 << 30);
    expect(payload.length).toBeLessThan(64 * 1024);
    const header = Buffer.alloc(12);
    header.write('BRCK', 0, 'latin1');
    header.writeUInt8(1, 4);
    header.writeUInt8(1, 5);
    header.writeUInt32BE(64 * 1024, 8);
    await writeFile(join(repo, 'chunks', prefix!, id!), Buffer.concat([header, payload]));

    const v = await cliWithPeakRss(['verify', '--repo', repo, '--json']);
    expect(v.code, v.stderr).toBe(4);
    expect(v.json.damage).toEqual([expect.objectContaining({ chunk: id, code: 'CHUNK_CORRUPT' })]);
    expect(v.maxRssBytes).toBeLessThan(300 << 20);
    const r = await cliWithPeakRss(['restore', '--repo', repo, '--disk', 'disk', '--to', join(dir, 'out.img'), '--json']);
    expect(r.code, r.stderr).toBe(4);
    expect(r.json).toMatchObject({ ok: false, code: 'CHUNK_CORRUPT' });
    expect(r.maxRssBytes).toBeLessThan(300 << 20);
    expect(await readdir(dir)).not.toContain('out.img');
  });
});

describe('over the network, a changed block travels as a patch of its changed slices', () => {
  it('sends a 4K change in a random 256K block as about one 16K slice, and restores bit-exact', async () => {
    const kind = repoKinds.find((k) => k.name === 'http');
    if (!kind) return; // BLOCKREP_TEST_REPO_KINDS=local asked for local repositories only
    const dir = join(base, 'patch');
    await mkdir(dir, { recursive: true });
    const repo = await openTestRepo(kind, join(dir, 'repo'));
    const img = join(dir, 'random.img');
    const data = randomBytes(4 << 20);
    await writeFile(img, data);
    const cli = (args: string[]) => runCli([...args, ...repo.args], { env: repo.env });
    expect((await cli(['backup', img, '--json'])).code).toBe(0);
    randomBytes(4096).copy(data, 1_000_000);
    await writeFile(img, data);
    const second = await cli(['backup', img, '--json']);
    expect(second.json.disks[0]).toMatchObject({ changedBlocks: 1, newChunks: 1, patchedChunks: 1 });
    expect(second.json.disks[0].bytesSent).toBeLessThan(2 * 16 * 1024 + 2048);
    const r = await cli(['restore', '--disk', 'random', '--to', join(dir, 'out.img')]);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(join(dir, 'out.img'))).equals(data)).toBe(true);
  });
});
