import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { encodeChunk } from '../../src/chunk/chunk-codec.js';
import type { FinishedManifest } from '../../src/manifest/manifest-writer.js';
import { Repository } from '../../src/repository/repository.js';
import { CONFIG_KEY } from '../../src/repository/repository-config.js';
import { tempDir } from '../support/temp-dir.js';

/** A stand-in manifest: publishing stores bytes; their form is the manifest tests' concern. */
function finished(text: string): FinishedManifest {
  const bytes = Buffer.from(text);
  return {
    bytes: bytes.length,
    digest: Buffer.alloc(32),
    stream: async function* () {
      yield bytes;
    },
    delta: () => undefined,
  };
}

describe('repository', () => {
  it('is created in an empty or new folder, and refuses a foreign non-empty one', async () => {
    const root = await tempDir();
    await expect(Repository.open(new LocalBackend(join(root, 'none')))).rejects.toMatchObject({ code: 'REPO_NOT_FOUND' });
    const repo = await Repository.open(new LocalBackend(join(root, 'new')), { create: true });
    expect(repo.config.version).toBe(1);
    const again = await Repository.open(new LocalBackend(join(root, 'new')));
    expect(again.config.id).toBe(repo.config.id);
    await mkdir(join(root, 'foreign'));
    await writeFile(join(root, 'foreign', 'data.txt'), 'mine');
    await expect(Repository.open(new LocalBackend(join(root, 'foreign')), { create: true })).rejects.toMatchObject({ code: 'REPO_NOT_FOUND', message: expect.stringMatching(/not empty/) });
  });

  it('refuses a repository of another format version with a clear message', async () => {
    const root = await tempDir();
    await Repository.open(new LocalBackend(root), { create: true });
    const config = JSON.parse(await readFile(join(root, CONFIG_KEY), 'utf8'));
    await writeFile(join(root, CONFIG_KEY), JSON.stringify({ ...config, version: 0 }));
    await expect(Repository.open(new LocalBackend(root))).rejects.toMatchObject({ code: 'REPO_FORMAT', message: expect.stringMatching(/older blockrep/) });
    // Version 2 is an encrypted repository (it needs its encryption facts); 3 is from the future.
    await writeFile(join(root, CONFIG_KEY), JSON.stringify({ ...config, version: 3 }));
    await expect(Repository.open(new LocalBackend(root))).rejects.toMatchObject({ code: 'REPO_FORMAT', message: expect.stringMatching(/upgrade blockrep/) });
    await writeFile(join(root, CONFIG_KEY), '{not json');
    await expect(Repository.open(new LocalBackend(root))).rejects.toMatchObject({ code: 'REPO_CORRUPT' });
  });

  it('stores chunks once, reads them back checked, and reports damage', async () => {
    const root = await tempDir();
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    const data = Buffer.from('hello blockrep '.repeat(1000));
    const chunk = encodeChunk(data);
    expect(await repo.hasChunk(chunk.id)).toBe(false);
    await repo.putChunk(chunk);
    await repo.flush();
    expect(await repo.hasChunk(chunk.id)).toBe(true);
    expect((await repo.getChunk(chunk.id)).equals(data)).toBe(true);
    const path = join(root, 'chunks', chunk.id.slice(0, 2), chunk.id);
    const blob = await readFile(path);
    blob[blob.length - 1]! ^= 0xff;
    await writeFile(path, blob);
    await expect(repo.getChunk(chunk.id)).rejects.toMatchObject({ code: 'CHUNK_CORRUPT' });
    await expect(repo.getChunk('0'.repeat(63) + '1')).rejects.toMatchObject({ code: 'CHUNK_MISSING' });
  });

  it('stores incompressible data as it is and compressible data smaller', () => {
    const random = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24));
    const zeros = Buffer.alloc(65536, 7);
    expect(encodeChunk(zeros).blob.length).toBeLessThan(1000);
    expect(encodeChunk(random).blob.length).toBeLessThanOrEqual(random.length + 12);
  });

  it('lets one writer lock a disk, names the holder, and takes over a dead holder', async () => {
    const root = await tempDir();
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    const lock = await repo.lockDisk('vm/vda', 'backup');
    await expect(repo.lockDisk('vm/vda', 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED', message: expect.stringMatching(new RegExp(`process ${process.pid} on ${hostname()}`)) });
    const other = await repo.lockDisk('vm/vdb', 'backup');
    await lock.release();
    await other.release();
    // A holder that died without releasing: a process that has exited.
    const child = spawn(process.execPath, ['-e', '0']);
    const deadPid = child.pid!;
    await new Promise((r) => child.on('exit', r));
    await mkdir(join(root, 'locks'), { recursive: true });
    await writeFile(join(root, 'locks', 'vm%2Fvda.lock'), JSON.stringify({ pid: deadPid, host: hostname(), createdAt: new Date().toISOString(), purpose: 'backup' }));
    const taken = await repo.lockDisk('vm/vda', 'backup');
    await taken.release();
  });

  it('keeps versions sorted and refuses a second publish of the same version', async () => {
    const root = await tempDir();
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    const ids = ['20261126T033504.123Z-aaaaaa', '20261126T033504.124Z-000000', '20261127T000000.000Z-ffffff'];
    for (const id of [ids[2]!, ids[0]!, ids[1]!]) {
      await repo.publishVersion('d', id, finished('x'));
    }
    expect(await repo.listVersions('d')).toEqual(ids);
    expect(await repo.latestVersion('d')).toBe(ids[2]);
    await expect(repo.publishVersion('d', ids[0]!, finished('y'))).rejects.toMatchObject({ code: 'EXISTS' });
    expect(await repo.listDisks()).toEqual(['d']);
    await expect(repo.resolveVersion('d', '20200101T000000.000Z-000000')).rejects.toMatchObject({ code: 'VERSION_NOT_FOUND' });
    await expect(repo.resolveVersion('e', undefined)).rejects.toMatchObject({ code: 'DISK_NOT_FOUND' });
  });

  it('keeps a disk whose id starts like a temporary file (".tmp-…") visible, locked and listed', async () => {
    const root = await tempDir();
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    const lock = await repo.lockDisk('.tmp-x/vda', 'backup');
    await expect(repo.lockDisk('.tmp-x/vda', 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    await repo.publishVersion('.tmp-x/vda', '20261126T033504.123Z-aaaaaa', finished('x'));
    await lock.release();
    expect(await repo.listDisks()).toEqual(['.tmp-x/vda']);
    expect(await repo.listVersions('.tmp-x/vda')).toEqual(['20261126T033504.123Z-aaaaaa']);
  });
});
