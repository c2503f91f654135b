import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/temp-dir.js';
import { hookEnv, hookPids, isAlive, MariadbServer, runHook, skipDbTests, waitFor, type HookEnv } from './support/db-servers.js';

/**
 * guest/fsfreeze-hook.d/mariadb against a real MariaDB 10.11 server, run as qemu-ga runs it.
 * After freeze returns, writes from other sessions wait; after thaw they complete; without a
 * thaw the lock goes after the hold timeout and no process of the hook is left; a server that
 * is down or a lock that cannot be had in time fails the freeze with a logged reason.
 */

describe.skipIf(skipDbTests)('MariaDB fsfreeze hook', () => {
  let dir: string;
  let db: MariadbServer;
  let n = 0;
  const envFor = async (settings: Record<string, string> = {}): Promise<HookEnv> => {
    n++;
    return hookEnv(join(dir, `hook${n}`), { MARIADB_DEFAULTS_FILE: db.optionFile, MARIADB_HOLD_TIMEOUT: '60', MARIADB_LOCK_WAIT_TIMEOUT: '10', ...settings });
  };
  const insertWaits = async (): Promise<string[]> => waitFor('the INSERT to wait for the lock', async () => ((await db.waitingForLock()).some((q) => q.includes('INSERT')) ? db.waitingForLock() : undefined));

  beforeAll(async () => {
    dir = await tempDir('blockrep-hook-mariadb-');
    db = await MariadbServer.start(join(dir, 'db'));
  }, 120_000);
  afterAll(async () => {
    await db?.stop();
  });

  it('holds FLUSH TABLES WITH READ LOCK from freeze to thaw: a concurrent INSERT waits, then completes', async () => {
    const env = await envFor();
    const frozen = await runHook('mariadb', 'freeze', env);
    expect(frozen.code, frozen.stderr).toBe(0);
    expect(frozen.stderr).toContain('FLUSH TABLES WITH READ LOCK held');

    let insertDone = false;
    const insert = db.session('INSERT INTO t.a VALUES (1);').then((r) => {
      insertDone = true;
      return r;
    });
    expect(await insertWaits()).toEqual(['INSERT INTO t.a VALUES (1)']);
    expect(insertDone).toBe(false);
    const pids = await hookPids(env, 'mariadb');
    expect(pids.length).toBe(3);

    const thawed = await runHook('mariadb', 'thaw', env);
    expect(thawed.code, thawed.stderr).toBe(0);
    expect((await insert).code).toBe(0);
    expect(await db.sql('SELECT COUNT(*) FROM t.a')).toBe('1\n');
    for (const pid of pids) expect(await isAlive(pid), `pid ${pid}`).toBe(false);
    // Its state (pids, FIFO) is gone.
    expect(await readdir(env.state)).toEqual([]);
    const log = await readFile(env.logFile, 'utf8');
    expect(log).toMatch(/FLUSH TABLES WITH READ LOCK held by session pid \d+[^\n]*\n[^\n]*UNLOCK TABLES: the session ended/);
  });

  it('without a thaw, releases the lock after the hold timeout and leaves no process', async () => {
    const env = await envFor({ MARIADB_HOLD_TIMEOUT: '3' });
    const frozen = await runHook('mariadb', 'freeze', env);
    expect(frozen.code, frozen.stderr).toBe(0);
    const pids = await hookPids(env, 'mariadb');
    expect(pids.length).toBe(3);
    const insert = db.session('INSERT INTO t.b VALUES (1);');
    await insertWaits();
    // The INSERT completes once the hook's session gives the lock up by itself.
    expect((await insert).code).toBe(0);
    await waitFor('the hook to log the release', async () => ((await readFile(env.logFile, 'utf8')).includes('thaw never came: released the lock after 3 s') ? true : undefined), 15_000);
    await waitFor('every process of the hook to end', async () => {
      for (const pid of pids) if (await isAlive(pid)) return undefined;
      return true;
    }, 15_000);
    expect(await readdir(env.state)).toEqual([]);
    // A late thaw is harmless.
    const thawed = await runHook('mariadb', 'thaw', env);
    expect(thawed.code).toBe(0);
  });

  it('fails the freeze, with the reason logged, when the lock cannot be had in time', async () => {
    const env = await envFor({ MARIADB_LOCK_WAIT_TIMEOUT: '1' });
    // Another session holds a write lock on t.a for longer than the hook may wait.
    const holder = db.session('LOCK TABLES t.a WRITE; SELECT SLEEP(20); UNLOCK TABLES;');
    await waitFor('the other session to hold its lock', async () => ((await db.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(20)%'")) === '1\n' ? true : undefined));
    const started = Date.now();
    const frozen = await runHook('mariadb', 'freeze', env);
    expect(frozen.code).toBe(1);
    expect(Date.now() - started).toBeLessThan(15_000);
    const log = await readFile(env.logFile, 'utf8');
    expect(log).toContain('cannot lock the tables: ERROR 1205');
    expect(log).toContain('refusing the freeze');
    // Nothing of the attempt is left: writes to other tables go through at once.
    await db.sql('INSERT INTO t.b VALUES (2)', 5_000);
    const id = (await db.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(20)%'")).trim();
    await db.sql(`KILL ${id}`);
    await holder;
  });

  it('thaw without a freeze, or twice, is harmless', async () => {
    const env = await envFor();
    expect((await runHook('mariadb', 'thaw', env)).code).toBe(0);
    expect((await runHook('mariadb', 'freeze', env)).code).toBe(0);
    expect((await runHook('mariadb', 'thaw', env)).code).toBe(0);
    expect((await runHook('mariadb', 'thaw', env)).code).toBe(0);
    await db.sql('INSERT INTO t.a VALUES (3)', 5_000);
  });

  it('does nothing when no client is installed, unless MARIADB_HOOK=on', async () => {
    const absent = await envFor({ MARIADB_CLIENT: 'blockrep-no-such-client' });
    const r = await runHook('mariadb', 'freeze', absent);
    expect(r.code).toBe(0);
    const required = await envFor({ MARIADB_CLIENT: 'blockrep-no-such-client', MARIADB_HOOK: 'on' });
    const refused = await runHook('mariadb', 'freeze', required);
    expect(refused.code).toBe(1);
    expect(await readFile(required.logFile, 'utf8')).toContain('no MariaDB/MySQL client (blockrep-no-such-client) is installed; refusing the freeze');
  });

  it('fails the freeze, with the reason logged, when the server is down', async () => {
    await db.stop();
    try {
      const env = await envFor({ MARIADB_HOOK: 'on' });
      const r = await runHook('mariadb', 'freeze', env);
      expect(r.code).toBe(1);
      expect(await readFile(env.logFile, 'utf8')).toMatch(/cannot lock the tables: ERROR 2002 .*Can't connect.*refusing the freeze/);
      expect(await hookPids(env, 'mariadb')).toEqual([]);
    } finally {
      await db.boot();
    }
  });
});
