import { readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * `blockrep token` changes of one tokens file made at once, through the real CLI: each is a
 * read-modify-write of the whole file, so without the file's lock one would be lost — a revoked
 * token coming back. A lock left by a process that is gone is taken over.
 */
let dir: string;

beforeAll(async () => {
  dir = await tempDir('blockrep-tokens-');
});

const names = async (tokens: string): Promise<string[]> => {
  const r = await runCli(['token', 'list', '--tokens', tokens, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return r.json.tokens.map((t: { name: string }) => t.name).sort();
};

describe('token changes at once', () => {
  it('10 rounds of a revoke racing a create: the revoked token never comes back, the new one stays', async () => {
    const tokens = join(dir, 'tokens.json');
    const create = (name: string) => runCli(['token', 'create', '--tokens', tokens, '--name', name, '--disks', '*', '--rights', 'read']);
    for (let round = 0; round < 10; round++) {
      expect((await create(`old-${round}`)).code).toBe(0);
      const [revoked, created] = await Promise.all([runCli(['token', 'revoke', '--tokens', tokens, `old-${round}`]), create(`new-${round}`)]);
      expect(revoked.code, revoked.stderr).toBe(0);
      expect(created.code, created.stderr).toBe(0);
      const now = await names(tokens);
      expect(now, `round ${round}`).not.toContain(`old-${round}`);
      expect(now, `round ${round}`).toContain(`new-${round}`);
    }
    expect(await names(tokens)).toEqual(Array.from({ length: 10 }, (_, i) => `new-${i}`).sort());
  });

  it('a lock left by a process that is gone is taken over; the lock is gone afterwards', async () => {
    const tokens = join(dir, 'stale.json');
    const lock = `${tokens}.lock`;
    // pid 2^22 + 1 is above Linux's pid_max ceiling: no such process.
    await writeFile(lock, JSON.stringify({ pid: 4_194_305, host: hostname(), createdAt: new Date().toISOString(), purpose: 'blockrep token' }));
    const r = await runCli(['token', 'create', '--tokens', tokens, '--name', 'after', '--disks', '*', '--rights', 'read']);
    expect(r.code, r.stderr).toBe(0);
    expect(await names(tokens)).toEqual(['after']);
    await expect(readFile(lock)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
