import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/temp-dir.js';
import { hookEnv, hookPids, isAlive, PostgresServer, runHook, skipDbTests, waitFor, type HookEnv } from './support/db-servers.js';

/**
 * guest/fsfreeze-hook.d/postgresql against a real PostgreSQL 15 server, run as qemu-ga runs it
 * (as root; psql runs as postgres with peer authentication): freeze runs a CHECKPOINT; with
 * PG_BACKUP_MODE=yes a session holds pg_backup_start() until thaw runs pg_backup_stop(), or
 * until the hold timeout.
 */

describe.skipIf(skipDbTests)('PostgreSQL fsfreeze hook', () => {
  let dir: string;
  let db: PostgresServer;
  let n = 0;
  const envFor = async (settings: Record<string, string> = {}): Promise<HookEnv> => {
    n++;
    return hookEnv(join(dir, `hook${n}`), { PGHOST: db.socketDir, PG_HOLD_TIMEOUT: '60', ...settings });
  };
  const checkpoints = async (): Promise<number> => Number(await db.sql('SELECT checkpoints_req FROM pg_stat_bgwriter'));
  /** The hook's backup session, by the application name it sets, and its last statement. */
  const backupSessions = async (): Promise<string[]> => (await db.sql("SELECT query FROM pg_stat_activity WHERE application_name = 'blockrep-fsfreeze'")).split('\n').filter(Boolean);

  beforeAll(async () => {
    dir = await tempDir('blockrep-hook-postgresql-');
    db = await PostgresServer.start(join(dir, 'db'));
  }, 120_000);
  afterAll(async () => {
    await db?.stop();
  });

  it('runs a CHECKPOINT on freeze; thaw does nothing more', async () => {
    const env = await envFor();
    const before = await checkpoints();
    const frozen = await runHook('postgresql', 'freeze', env);
    expect(frozen.code, frozen.stderr).toBe(0);
    expect(await checkpoints()).toBe(before + 1);
    expect(await backupSessions()).toEqual([]);
    expect((await runHook('postgresql', 'thaw', env)).code).toBe(0);
    expect(await readFile(env.logFile, 'utf8')).toContain('postgresql: CHECKPOINT done');
  });

  it('with PG_BACKUP_MODE=yes, holds backup mode from freeze to thaw', async () => {
    const env = await envFor({ PG_BACKUP_MODE: 'yes' });
    const frozen = await runHook('postgresql', 'freeze', env);
    expect(frozen.code, frozen.stderr).toBe(0);
    expect(await backupSessions()).toEqual([expect.stringContaining("pg_backup_start('blockrep', true)")]);
    const pids = await hookPids(env, 'postgresql');
    expect(pids.length).toBe(3);
    const thawed = await runHook('postgresql', 'thaw', env);
    expect(thawed.code, thawed.stderr).toBe(0);
    expect(await backupSessions()).toEqual([]);
    for (const pid of pids) expect(await isAlive(pid)).toBe(false);
    const log = await readFile(env.logFile, 'utf8');
    expect(log).toMatch(/backup mode held by session pid \d+, [0-9A-F]+\/[0-9A-F]+/);
    expect(log).toContain('pg_backup_stop: backup mode ended (pg_backup_stop done)');
    // Twice is harmless.
    expect((await runHook('postgresql', 'thaw', env)).code).toBe(0);
  });

  it('without a thaw, ends backup mode after the hold timeout and leaves no process', async () => {
    const env = await envFor({ PG_BACKUP_MODE: 'yes', PG_HOLD_TIMEOUT: '2' });
    expect((await runHook('postgresql', 'freeze', env)).code).toBe(0);
    const pids = await hookPids(env, 'postgresql');
    expect(await backupSessions()).toHaveLength(1);
    await waitFor('the backup session to end', async () => ((await backupSessions()).length === 0 ? true : undefined), 15_000);
    await waitFor('every process of the hook to end', async () => {
      for (const pid of pids) if (await isAlive(pid)) return undefined;
      return true;
    }, 15_000);
    await waitFor('the hook to log the end of backup mode', async () => ((await readFile(env.logFile, 'utf8')).includes('thaw never came: ended backup mode after 2 s') ? true : undefined), 15_000);
    expect(await readdir(env.state)).toEqual([]);
  });

  it('fails the freeze, with the reason logged, when the server is down', async () => {
    await db.stop();
    try {
      const env = await envFor({ PG_HOOK: 'on' });
      const r = await runHook('postgresql', 'freeze', env);
      expect(r.code).toBe(1);
      expect(await readFile(env.logFile, 'utf8')).toMatch(/CHECKPOINT failed: .*connection to server on socket .* failed.*refusing the freeze/);
    } finally {
      await db.boot();
    }
  });
});
