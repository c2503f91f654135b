import { execFileSync } from 'node:child_process';
import { lstat, mkdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patternBytes } from '../support/qemu-tools.js';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * What `restore --to` may write: a regular file (new, or replaced with --force) or a block
 * device. A character device, FIFO, socket or dangling symlink is refused with RESTORE_TARGET
 * and left exactly as it was — with --force too, and in both formats. Needs root (mknod).
 */
let dir: string;
let repo: string;
let image: Buffer;
let server: Server;

beforeAll(async () => {
  dir = await tempDir('blockrep-restore-target-');
  repo = join(dir, 'repo');
  image = patternBytes(1 << 20, 7);
  const source = join(dir, 'disk.img');
  await writeFile(source, image);
  const b = await runCli(['backup', source, '--repo', repo, '--disk', 'vm/vda']);
  expect(b.code, b.stderr).toBe(0);
  server = createServer();
  await new Promise<void>((resolve) => server.listen(join(dir, 'socket'), resolve));
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const restore = (to: string, ...extra: string[]) => runCli(['restore', '--repo', repo, '--disk', 'vm/vda', '--to', to, '--json', ...extra]);

/** What identifies a file system object: kind, inode, device numbers. */
async function identity(path: string): Promise<string> {
  const s = await lstat(path);
  return JSON.stringify({ mode: s.mode, ino: s.ino, rdev: s.rdev, size: s.size });
}

describe('restore refuses targets that are not a regular file or a block device', () => {
  beforeAll(async () => {
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    execFileSync('mknod', [join(dir, 'null'), 'c', '1', '3']); // the same device as /dev/null
    for (const name of ['fifo', 'null', 'socket']) await symlink(join(dir, name), join(dir, `link-to-${name}`));
  });

  for (const name of ['fifo', 'null', 'socket', 'link-to-fifo', 'link-to-null', 'link-to-socket']) {
    for (const format of ['raw', 'qcow2']) {
      it(`${name}, --format ${format}, with and without --force`, async () => {
        const path = join(dir, name);
        const before = await identity(path);
        const target = name.startsWith('link-to-') ? await identity(join(dir, name.slice('link-to-'.length))) : undefined;
        for (const force of [[], ['--force']]) {
          const r = await restore(path, '--format', format, ...force);
          expect(r.code, r.stderr).toBe(1);
          expect(r.json).toMatchObject({ ok: false, code: 'RESTORE_TARGET', message: expect.stringMatching(/character device|FIFO|socket/) });
          expect(await identity(path)).toBe(before);
          if (target !== undefined) expect(await identity(join(dir, name.slice('link-to-'.length)))).toBe(target);
        }
      });
    }
  }

  it('a dangling symlink, with and without --force: refused, the link kept, nothing created', async () => {
    const link = join(dir, 'dangling');
    await symlink(join(dir, 'nowhere.img'), link);
    for (const force of [[], ['--force']]) {
      const r = await restore(link, ...force);
      expect(r.code, r.stderr).toBe(1);
      expect(r.json).toMatchObject({ ok: false, code: 'RESTORE_TARGET', message: expect.stringContaining('symlink to nothing') });
      expect(await readlink(link)).toBe(join(dir, 'nowhere.img'));
      await expect(lstat(join(dir, 'nowhere.img'))).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });

  it('an empty --to is a usage error', async () => {
    const r = await restore('');
    expect(r.code).toBe(2);
    expect(r.json).toMatchObject({ ok: false, code: 'USAGE', message: expect.stringContaining('--to needs a path') });
  });
});

describe('restored files', () => {
  it('a symlink to a regular file, with --force: the file it points to is replaced, the link kept', async () => {
    const real = join(dir, 'real.img');
    await writeFile(real, 'old');
    const link = join(dir, 'link-to-real');
    await symlink(real, link);
    expect((await restore(link)).json).toMatchObject({ code: 'RESTORE_TARGET', message: expect.stringContaining('already exists') });
    const r = await restore(link, '--force');
    expect(r.code, r.stderr).toBe(0);
    expect((await lstat(link)).isSymbolicLink()).toBe(true);
    expect((await readFile(real)).equals(image)).toBe(true);
  });

  it('are readable by their owner only, whatever the umask, unless --mode says otherwise', async () => {
    const sub = join(dir, 'modes');
    await mkdir(sub);
    for (const format of ['raw', 'qcow2']) {
      const plain = join(sub, `plain.${format}`);
      expect((await restore(plain, '--format', format)).code).toBe(0);
      expect((await stat(plain)).mode & 0o7777).toBe(0o600);
      const shared = join(sub, `shared.${format}`);
      expect((await restore(shared, '--format', format, '--mode', '0640')).code).toBe(0);
      expect((await stat(shared)).mode & 0o7777).toBe(0o640);
    }
    // A replaced file gets the restore's mode, not the old file's.
    const old = join(sub, 'old.raw');
    await writeFile(old, 'x', { mode: 0o644 });
    expect((await restore(old, '--force')).code).toBe(0);
    expect((await stat(old)).mode & 0o7777).toBe(0o600);
    expect((await restore(join(sub, 'x.raw'), '--mode', '4755')).json).toMatchObject({ code: 'USAGE' });
  });
});
