import { randomBytes } from 'node:crypto';
import { constants, type Dirent } from 'node:fs';
import { chmod, link, lstat, lutimes, mkdir, open, readdir, rename, stat, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, sep } from 'node:path';
import { BlockrepError, DEFAULT_SYNC_LEVEL, systemErrorCode, wrapSystemError, type SyncLevel } from '../../shared/index.js';
import { contentTag, type Backend, type BackendObject, type ConditionalRemoval, type SizesOptions, type TempSweep, type WriteOptions } from '../backend.js';
import { loadSyncfs, type SyncFileSystem } from './native-syncfs.js';

const KEY = /^[A-Za-z0-9._%-]+(\/[A-Za-z0-9._%-]+)*$/;
const TEMP_PREFIX = '.tmp-';
/** An object removeIfOlder moved aside for a moment: `.tmp-gc-<name>-<random>`, always put back if found. */
const GC_ASIDE_PREFIX = `${TEMP_PREFIX}gc-`;
const GC_ASIDE = /^\.tmp-gc-(.+)-[0-9a-f]{16}$/;
/**
 * A repository holds whole disks: its files are readable by their owner only (the user blockrep
 * or its server runs as), whatever the umask, so no other local user reads around the tokens.
 * Files and folders of older repositories keep their modes and stay readable.
 */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
/** stat() calls in flight for one sizes() call: enough to keep a disk queue busy, not a storm. */
const SIZES_CONCURRENCY = 32;

export interface LocalBackendOptions {
  /**
   * Refuse (REPO_CORRUPT) any object that is not a regular file, and any folder on its way that
   * is not a real folder: a symbolic link (or a FIFO, a device) placed under the root is never
   * followed, read or written through. `blockrep serve` sets it; the root itself may be a link.
   */
  noFollow?: boolean;
  /**
   * How deferred writes (chunks) become durable by the next flush (shared/sync-level.ts):
   * `filesystem` (default) one syncfs of the root's file system, `file` an fsync per file.
   */
  syncLevel?: SyncLevel;
  /**
   * The syncfs to call with a descriptor of the root (default: the native addon's; null: none,
   * so every file is fsynced). Tests pass one that records when it runs.
   */
  syncFileSystem?: SyncFileSystem | null;
}

/**
 * A repository in a local directory. Durable write (restic's recipe): temp file in the target
 * folder → write → fsync → rename (or link, for exclusive writes) → fsync the folder. A deferred
 * write (a chunk) at sync level `filesystem` skips its fsync and the folder's: the next flush
 * makes it durable with one syncfs of the root's file system (PBS's default), which covers the
 * data and the folder entries of every file renamed before it started.
 */
export class LocalBackend implements Backend {
  readonly location: string;
  private readonly root: string;
  private readonly dirsToSync = new Set<string>();
  private readonly knownDirs = new Set<string>();
  /** replaceIfMatch() calls in progress, per key: each waits for the one before. */
  private readonly conditional = new Map<string, Promise<unknown>>();
  /** Flushes run one after another: see flush(). */
  private flushChain: Promise<void> = Promise.resolve();

  private readonly noFollow: boolean;
  /** The syncfs deferred writes rely on, or null: they are fsynced one by one. */
  private readonly syncfs: SyncFileSystem | null;
  /** Files renamed into place without an fsync since the last flush began. */
  private unsynced = 0;
  /**
   * A descriptor of the root, opened before the first write that skips its fsync and kept
   * until close(): syncfs reports a write-back error that happened since its descriptor was
   * opened, so it must predate the writes it vouches for.
   */
  private rootHandle: Promise<FileHandle> | undefined;

  constructor(root: string, options: LocalBackendOptions = {}) {
    this.root = root;
    this.location = root;
    this.noFollow = options.noFollow ?? false;
    const level = options.syncLevel ?? DEFAULT_SYNC_LEVEL;
    this.syncfs = level === 'filesystem' ? (options.syncFileSystem === undefined ? loadSyncfs() : options.syncFileSystem) : null;
  }

  /** How deferred writes are made durable, as configured and as available here. */
  get effectiveSyncLevel(): SyncLevel {
    return this.syncfs === null ? 'file' : 'filesystem';
  }

  /** With noFollow: every folder between the root and `key` that exists is a real folder. */
  private async checkFolders(key: string): Promise<void> {
    if (!this.noFollow) return;
    const parts = key.split('/').slice(0, -1);
    let dir = this.root;
    for (const part of parts) {
      dir = join(dir, part);
      let st;
      try {
        st = await lstat(dir);
      } catch (err) {
        if (systemErrorCode(err) === 'ENOENT') return;
        throw wrapSystemError(err, `reading ${key} in ${this.location}`);
      }
      if (!st.isDirectory()) throw notRegular(key, this.location);
    }
  }

  /** stat(), or with noFollow lstat() of a regular file only (a link is refused, not followed). */
  private async statObject(key: string, path: string): Promise<import('node:fs').Stats> {
    if (!this.noFollow) return stat(path);
    await this.checkFolders(key);
    const st = await lstat(path);
    if (!st.isFile()) throw notRegular(key, this.location);
    return st;
  }

  private path(key: string): string {
    // Keys come from the repository layer, but a bad one must never escape the root.
    if (!KEY.test(key) || key.split('/').some((s) => s === '.' || s === '..' || s.startsWith(TEMP_PREFIX))) {
      throw new BlockrepError('INTERNAL', `invalid object key ${JSON.stringify(key)}`);
    }
    return join(this.root, ...key.split('/'));
  }

  async size(key: string): Promise<number | undefined> {
    try {
      return (await this.statObject(key, this.path(key))).size;
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return undefined;
      throw wrapSystemError(err, `reading ${key} in ${this.location}`);
    }
  }

  replaceIfMatch(key: string, tag: string, data: Uint8Array | null): Promise<boolean> {
    const run = (this.conditional.get(key) ?? Promise.resolve())
      .catch(() => undefined)
      .then(async () => {
        let current: Buffer;
        try {
          current = await this.read(key);
        } catch (err) {
          if (err instanceof BlockrepError && err.code === 'NOT_FOUND') return false;
          throw err;
        }
        if (contentTag(current) !== tag) return false;
        if (data === null) await this.remove(key);
        else await this.write(key, data);
        return true;
      });
    this.conditional.set(key, run);
    void run.finally(() => {
      if (this.conditional.get(key) === run) this.conditional.delete(key);
    }).catch(() => undefined);
    return run;
  }

  async objectAgeMs(key: string): Promise<number | undefined> {
    try {
      // Never negative: a file written "in the future" (a clock stepped back) is as fresh as can be.
      return Math.max(0, Date.now() - (await this.statObject(key, this.path(key))).mtimeMs);
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return undefined;
      throw wrapSystemError(err, `reading ${key} in ${this.location}`);
    }
  }

  async sizes(keys: string[], options: SizesOptions = {}): Promise<Array<number | undefined>> {
    const out = new Array<number | undefined>(keys.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const i = next++;
        out[i] = options.touch ? await this.touch(keys[i]!) : await this.size(keys[i]!);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SIZES_CONCURRENCY, keys.length) }, worker));
    return out;
  }

  /**
   * Sets the object's modification time to now and returns its size (undefined: missing). The
   * touch comes first: if it succeeds, a removeIfOlder that has not yet moved the object aside
   * sees the new time; one that has, made the touch fail (missing: the caller writes it anew).
   */
  private async touch(key: string): Promise<number | undefined> {
    const path = this.path(key);
    try {
      const now = new Date();
      await this.checkFolders(key);
      await (this.noFollow ? lutimes : utimes)(path, now, now);
      return (await this.statObject(key, path)).size;
    } catch (err) {
      const code = systemErrorCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      // A file of another user (a shared folder) cannot be given a time: "missing" makes the
      // caller write it anew, which gives it one.
      if (code === 'EPERM' || code === 'EACCES') return undefined;
      throw wrapSystemError(err, `touching ${key} in ${this.location}`);
    }
  }

  async read(key: string, offset = 0, length?: number): Promise<Buffer> {
    let fh;
    try {
      await this.checkFolders(key);
      // O_NONBLOCK: a FIFO planted here must not hang the read (it is refused below).
      fh = await open(this.path(key), this.noFollow ? constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK : 'r');
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('NOT_FOUND', `${key} does not exist in ${this.location}`, { cause: err });
      if (systemErrorCode(err) === 'ELOOP') throw notRegular(key, this.location);
      throw wrapSystemError(err, `reading ${key} in ${this.location}`);
    }
    try {
      if (this.noFollow && !(await fh.stat()).isFile()) throw notRegular(key, this.location);
      const total = length ?? (await fh.stat()).size - offset;
      const buf = Buffer.allocUnsafe(Math.max(0, total));
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await fh.read(buf, done, buf.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === buf.length ? buf : buf.subarray(0, done);
    } catch (err) {
      throw wrapSystemError(err, `reading ${key} in ${this.location}`);
    } finally {
      await fh.close();
    }
  }

  async write(key: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: WriteOptions = {}): Promise<number> {
    const target = this.path(key);
    const dir = dirname(target);
    const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    let written = 0;
    // A chunk waits for the flush's syncfs; anything else (manifests, locks, config) is synced now.
    const skipFsync = options.deferSync === true && this.syncfs !== null;
    try {
      await this.checkFolders(key);
      await this.ensureDir(dir);
      if (skipFsync) await this.openRoot();
      const fh = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, FILE_MODE);
      try {
        await fh.chmod(FILE_MODE); // open's mode is masked by the umask
        if (data instanceof Uint8Array) {
          written = await writeAll(fh, data, 0);
        } else {
          for await (const piece of data) written += await writeAll(fh, piece, written);
        }
        if (!skipFsync) await fh.sync();
      } finally {
        await fh.close();
      }
      if (options.exclusive) {
        try {
          await link(temp, target);
        } catch (err) {
          if (systemErrorCode(err) === 'EEXIST') throw new BlockrepError('EXISTS', `${key} already exists in ${this.location}`);
          throw err;
        }
        await unlink(temp);
      } else {
        await rename(temp, target);
      }
      if (skipFsync) this.unsynced++;
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw wrapSystemError(err, `writing ${key} to ${this.location}`);
    }
    this.dirsToSync.add(dir);
    if (!options.deferSync) await this.flush();
    return written;
  }

  /**
   * Flushes are serialised: with several callers at once (a server's requests), a flush that
   * found nothing pending must still not return before an earlier flush has synced the folders
   * of writes it depends on. A failed sync puts its folders back, so a later flush retries them.
   */
  flush(): Promise<void> {
    const run = this.flushChain.catch(() => undefined).then(() => this.syncPending());
    this.flushChain = run;
    return run;
  }

  private async syncPending(): Promise<void> {
    const dirs = [...this.dirsToSync];
    const unsynced = this.unsynced;
    this.dirsToSync.clear();
    this.unsynced = 0;
    try {
      if (unsynced > 0 && this.syncfs !== null) {
        // Every file counted here was renamed before this call: its data and its folder entry
        // (and those of the folders listed) are durable when syncfs returns.
        await this.syncfs((await this.openRoot()).fd);
      } else {
        for (const dir of dirs) await syncDir(dir);
      }
    } catch (err) {
      for (const dir of dirs) this.dirsToSync.add(dir);
      this.unsynced += unsynced;
      throw wrapSystemError(err, `syncing ${this.location}`);
    }
  }

  private openRoot(): Promise<FileHandle> {
    if (this.rootHandle === undefined) {
      const opening = open(this.root, constants.O_RDONLY | constants.O_DIRECTORY);
      this.rootHandle = opening;
      opening.catch(() => {
        if (this.rootHandle === opening) this.rootHandle = undefined; // the next write tries again
      });
    }
    return this.rootHandle;
  }

  async *list(prefix: string): AsyncIterable<BackendObject> {
    const base = prefix.replace(/\/+$/, '');
    const start = base === '' ? this.root : this.path(base);
    if (base !== '') await this.checkFolders(`${base}/-`);
    if (this.noFollow && base !== '') {
      const st = await lstat(start).catch(() => undefined);
      if (st === undefined) return;
      if (!st.isDirectory()) throw notRegular(base, this.location);
    }
    yield* this.walk(start, base);
  }

  async folders(prefix: string): Promise<string[]> {
    const base = prefix.replace(/\/+$/, '');
    await this.checkFolders(`${base}/-`);
    let entries: Dirent[];
    try {
      entries = await readdir(base === '' ? this.root : this.path(base), { withFileTypes: true });
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return [];
      throw wrapSystemError(err, `listing ${prefix} in ${this.location}`);
    }
    return entries.filter((e) => e.isDirectory() && !e.name.startsWith(TEMP_PREFIX)).map((e) => e.name).sort();
  }

  private async *walk(dir: string, keyPrefix: string): AsyncIterable<BackendObject> {
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return;
      throw wrapSystemError(err, `listing ${dir}`);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (entry.name.startsWith(TEMP_PREFIX)) continue;
      const key = keyPrefix === '' ? entry.name : `${keyPrefix}/${entry.name}`;
      const full = join(dir, entry.name);
      if (entry.isDirectory()) {
        yield* this.walk(full, key);
      } else if (entry.isFile()) {
        const st = await (this.noFollow ? lstat : stat)(full).catch(() => undefined);
        if (st !== undefined) yield { key, size: st.size, mtimeMs: st.mtimeMs };
      }
    }
  }

  async remove(key: string): Promise<void> {
    try {
      await this.checkFolders(key);
      await unlink(this.path(key));
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT') return;
      throw wrapSystemError(err, `removing ${key} from ${this.location}`);
    }
  }

  /**
   * Removes the object if it was last modified before `cutoffMs`, race-free against touch():
   * the object is renamed aside (atomic), and its time is read again on the renamed file — the
   * same inode, so a touch that landed before the rename shows — and put back if it is young.
   * A touch after the rename finds nothing and the caller writes the object anew.
   */
  async removeIfOlder(key: string, cutoffMs: number): Promise<ConditionalRemoval> {
    const target = this.path(key);
    const aside = join(dirname(target), `${GC_ASIDE_PREFIX}${basename(target)}-${randomBytes(8).toString('hex')}`);
    try {
      if ((await this.statObject(key, target)).mtimeMs >= cutoffMs) return 'young';
      await rename(target, aside);
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return 'missing';
      throw wrapSystemError(err, `removing ${key} from ${this.location}`);
    }
    try {
      if ((await stat(aside)).mtimeMs < cutoffMs) {
        await unlink(aside);
        return 'removed';
      }
      await putBack(aside, target);
      return 'young';
    } catch (err) {
      throw wrapSystemError(err, `removing ${key} from ${this.location}`);
    }
  }

  /**
   * Temporary files (`.tmp-*`) that writes cut short left in the repository's folders, older
   * than `cutoffMs`, are removed; an object removeIfOlder had moved aside when its process was
   * killed is put back, whatever its age (the next collection judges it again). Folders named
   * `.tmp-*` (a server's upload spool) are the business of their owner and are left alone.
   */
  async removeStaleTemps(cutoffMs: number): Promise<TempSweep> {
    const sweep: TempSweep = { files: 0, bytes: 0 };
    const visit = async (dir: string): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (systemErrorCode(err) === 'ENOENT' || systemErrorCode(err) === 'ENOTDIR') return;
        throw wrapSystemError(err, `listing ${dir}`);
      }
      for (const entry of entries) {
        const full = join(dir, entry.name);
        if (entry.isDirectory()) {
          if (!entry.name.startsWith(TEMP_PREFIX)) await visit(full);
          continue;
        }
        if (!entry.isFile() || !entry.name.startsWith(TEMP_PREFIX)) continue;
        try {
          const aside = GC_ASIDE.exec(entry.name);
          if (aside) {
            await putBack(full, join(dir, aside[1]!));
            continue;
          }
          const st = await stat(full);
          if (st.mtimeMs >= cutoffMs) continue;
          await unlink(full);
          sweep.files++;
          sweep.bytes += st.size;
        } catch (err) {
          if (systemErrorCode(err) === 'ENOENT') continue; // finished or removed meanwhile
          throw wrapSystemError(err, `removing ${full}`);
        }
      }
    };
    await visit(this.root);
    return sweep;
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      const handle = this.rootHandle;
      this.rootHandle = undefined;
      if (handle !== undefined) await handle.then((h) => h.close()).catch(() => undefined);
    }
  }

  private async ensureDir(dir: string): Promise<void> {
    if (this.knownDirs.has(dir)) return;
    // A new folder's own entry in its parent must be durable too.
    const created = await mkdir(dir, { recursive: true, mode: DIR_MODE });
    if (created !== undefined) {
      // mkdir's mode is masked by the umask: set it on every folder this call made.
      for (let d = dir; d.length >= created.length; d = dirname(d)) await chmod(d, DIR_MODE);
      let d = dir;
      while (d.length >= created.length && d !== this.root && d.startsWith(this.root + sep)) {
        this.dirsToSync.add(dirname(d));
        d = dirname(d);
      }
    }
    this.knownDirs.add(dir);
  }
}

function notRegular(key: string, location: string): BlockrepError {
  return new BlockrepError('REPO_CORRUPT', `${key} in ${location} is not a regular file or folder (a symbolic link?): refused`);
}

async function writeAll(fh: import('node:fs/promises').FileHandle, data: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < data.byteLength) {
    const { bytesWritten } = await fh.write(data, done, data.byteLength - done, position + done);
    done += bytesWritten;
  }
  return done;
}

/** Puts an object moved aside back under its name (unless it was written anew meanwhile). */
async function putBack(aside: string, target: string): Promise<void> {
  try {
    await link(aside, target);
  } catch (err) {
    if (systemErrorCode(err) !== 'EEXIST') throw err;
  }
  await unlink(aside);
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
