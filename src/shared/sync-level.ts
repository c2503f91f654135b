import { BlockrepError } from './blockrep-error.js';

/**
 * How a repository in a local folder (or a `blockrep serve` root) makes new chunks durable
 * before it publishes a version that refers to them (Proxmox Backup Server's `sync-level`):
 *
 * - `filesystem` (default): chunks are written without an fsync each (still temp → rename, so
 *   no half file has a chunk's name while the system runs), and one syncfs(2) of the
 *   repository's file system makes all of them — data and folder entries — durable before the
 *   manifest is written. One flush instead of one per chunk; it also flushes whatever else is
 *   waiting on that file system (other programs' writes).
 * - `file`: every chunk is fsynced before its rename, and its folder before the publish, as
 *   before. Slower on a first backup; what to choose when the file system is shared with
 *   programs that keep much unwritten data (a syncfs would wait for all of it), or when
 *   syncfs is not trusted there.
 *
 * Manifests, locks and the repository config are written with fsync whatever the level.
 */
export const SYNC_LEVELS = ['filesystem', 'file'] as const;
export type SyncLevel = (typeof SYNC_LEVELS)[number];
export const DEFAULT_SYNC_LEVEL: SyncLevel = 'filesystem';

/** A `--sync-level` (or job config `syncLevel`) value, or USAGE naming the choices. */
export function parseSyncLevel(text: string, what = '--sync-level'): SyncLevel {
  if ((SYNC_LEVELS as readonly string[]).includes(text)) return text as SyncLevel;
  throw new BlockrepError('USAGE', `${what} ${JSON.stringify(text)}: choose ${SYNC_LEVELS.join(' or ')}`);
}
