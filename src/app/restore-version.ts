import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Qcow2Writer } from '../image/index.js';
import { idHex, isZeroId } from '../manifest/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, systemErrorCode, wrapSystemError, assertDiskId } from '../shared/index.js';
import type { ProgressListener } from './progress.js';

export interface RestoreRequest {
  diskId: string;
  version?: string;
  to: string;
  format: 'raw' | 'qcow2';
  /** Replace an existing file, or write onto an existing block device. */
  force?: boolean;
  /** Mode of a new image file, whatever the umask; default 0600 (a disk image is private data). */
  mode?: number;
}

/** A restored image holds a whole disk: readable by its owner only unless asked otherwise. */
export const DEFAULT_RESTORE_MODE = 0o600;

export interface RestoreReport {
  disk: string;
  version: string;
  to: string;
  format: 'raw' | 'qcow2';
  imageBytes: number;
  blockSize: number;
  blocks: number;
  zeroBlocks: number;
  bytesWritten: number;
  bytesFetched: number;
  durationMs: number;
}

export interface RestoreOptions {
  /** Chunks fetched ahead of the block being written. */
  readAhead?: number;
  signal?: AbortSignal;
  onProgress?: ProgressListener | undefined;
}

interface BlockSink {
  /** Writes one block's data; zero blocks arrive as `undefined`. */
  write(offset: number, data: Buffer | undefined, length: number): Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/**
 * Writes a version of a disk to a file or block device, bit-exact. Every chunk is checked
 * against its SHA-256 as it is read; a damaged or missing chunk stops the restore with an error
 * and leaves no file that could be mistaken for a good copy (files are written under a
 * temporary name and renamed into place only when complete).
 */
export async function restoreVersion(repo: Repository, req: RestoreRequest, options: RestoreOptions = {}): Promise<RestoreReport> {
  const started = Date.now();
  const diskId = assertDiskId(req.diskId);
  const versionId = await repo.resolveVersion(diskId, req.version);
  const manifest = await repo.openManifest(diskId, versionId);
  const { blockSize, imageBytes, blockCount } = manifest.header;

  const sink = await openSink(req, imageBytes);
  const readAhead = Math.max(1, options.readAhead ?? 8);
  let bytesWritten = 0;
  let bytesFetched = 0;
  let zeroBlocks = 0;
  try {
    for await (const entries of manifest.batches(4096)) {
      // A sliding window of chunk reads: up to `readAhead` in flight, written in block order.
      const window: Array<Promise<Buffer | undefined>> = [];
      const n = entries.hashes.length;
      let next = 0;
      const fill = (): void => {
        while (next < n && window.length < readAhead) {
          const i = next++;
          const p = isZeroId(entries.ids, i) ? Promise.resolve(undefined) : fetch(idHex(entries.ids, i));
          p.catch(() => undefined); // awaited in order below; a failure ahead of its turn is not unhandled
          window.push(p);
        }
      };
      const fetch = async (id: string): Promise<Buffer> => {
        const blob = await repo.readChunkBlob(id);
        bytesFetched += blob.length;
        return repo.decodeChunkBlob(blob, id, blockSize); // never decodes past one block
      };
      fill();
      for (let i = 0; i < n; i++) {
        if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', 'restore interrupted; the partial file was removed');
        const pending = window.shift()!;
        fill();
        let data: Buffer | undefined;
        try {
          data = await pending;
        } catch (err) {
          await Promise.allSettled(window);
          throw annotate(err, diskId, versionId, entries.startBlock + i);
        }
        const block = entries.startBlock + i;
        const offset = block * blockSize;
        const length = Math.min(blockSize, imageBytes - offset);
        if (data !== undefined && data.length !== length) {
          await Promise.allSettled(window);
          throw new BlockrepError('REPO_CORRUPT', `disk ${diskId} version ${versionId} block ${block}: chunk holds ${data.length} bytes, the block has ${length}`);
        }
        if (data === undefined) zeroBlocks++;
        await sink.write(offset, data, length);
        bytesWritten += data?.length ?? 0;
        if (block % 64 === 0 || block === blockCount - 1) {
          options.onProgress?.({ kind: 'restore', disk: diskId, version: versionId, blocksDone: block + 1, blocks: blockCount, blockSize });
        }
      }
    }
    await sink.commit();
  } catch (err) {
    await sink.abort();
    throw err;
  }
  return {
    disk: diskId,
    version: versionId,
    to: req.to,
    format: req.format,
    imageBytes,
    blockSize,
    blocks: blockCount,
    zeroBlocks,
    bytesWritten,
    bytesFetched,
    durationMs: Date.now() - started,
  };
}

function annotate(err: unknown, diskId: string, versionId: string, block: number): unknown {
  if (err instanceof BlockrepError && (err.code === 'CHUNK_CORRUPT' || err.code === 'CHUNK_MISSING')) {
    return new BlockrepError(err.code, `disk ${diskId} version ${versionId} block ${block}: ${err.message}; this version cannot be restored intact (run \`blockrep verify\`)`, {
      cause: err,
      details: { disk: diskId, version: versionId, block },
    });
  }
  return err;
}

async function openSink(req: RestoreRequest, imageBytes: number): Promise<BlockSink> {
  if (req.to === '') throw new BlockrepError('USAGE', '--to needs a path: the image file or block device to write');
  const mode = req.mode ?? DEFAULT_RESTORE_MODE;
  const target = await restoreTarget(req);
  if (target.kind === 'block-device') {
    const existing = target.stats;
    if (req.format !== 'raw') throw new BlockrepError('RESTORE_TARGET', `${req.to} is a block device: only --format raw can be written to it`);
    if (existing.size !== 0 && existing.size < imageBytes) throw new BlockrepError('RESTORE_TARGET', `${req.to} is smaller than the disk (${imageBytes} bytes)`);
    return rawSink(await openForWrite(target.path, constants.O_WRONLY, mode), req.to, { writeZeros: true });
  }
  // A new or replaced file: written aside and renamed onto `target.path` (the file a symlink
  // points to, so the link stays), with its own mode: the old file's mode is not kept.
  if (req.format === 'qcow2') {
    const writer = await Qcow2Writer.create(target.path, imageBytes, { mode });
    return {
      write: async (offset, data) => {
        if (data) await writer.write(offset, data);
      },
      commit: () => writer.finish(),
      abort: () => writer.abort(),
    };
  }
  const temp = join(dirname(target.path), `.${basename(target.path)}.blockrep-${randomBytes(4).toString('hex')}`);
  const fh = await openForWrite(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.chmod(mode); // open's mode is masked by the umask
    await fh.truncate(imageBytes);
  } catch (err) {
    await fh.close();
    await unlink(temp).catch(() => undefined);
    throw wrapSystemError(err, `creating ${req.to}`);
  }
  return rawSink(fh, target.path, { writeZeros: false, temp });
}

type RestoreTarget = { kind: 'new-file' | 'file'; path: string } | { kind: 'block-device'; path: string; stats: import('node:fs').Stats };

/**
 * What `--to` names, decided before anything is written. A restore writes a regular file
 * (new, or replaced with --force) or a block device (with --force); anything else — a folder,
 * a character device such as /dev/null, a FIFO, a socket, a dangling symlink — is refused and
 * left as it is: replacing it would destroy something that is not a disk image.
 */
async function restoreTarget(req: RestoreRequest): Promise<RestoreTarget> {
  let link: import('node:fs').Stats;
  try {
    link = await lstat(req.to);
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') return { kind: 'new-file', path: req.to };
    throw wrapSystemError(err, `checking ${req.to}`);
  }
  let path = req.to;
  let existing = link;
  if (link.isSymbolicLink()) {
    try {
      path = await realpath(req.to);
      existing = await stat(path);
    } catch (err) {
      const sys = systemErrorCode(err);
      if (sys === 'ENOENT' || sys === 'ELOOP') {
        throw new BlockrepError('RESTORE_TARGET', `${req.to} is a symlink to nothing (${sys === 'ELOOP' ? 'a loop' : 'its target does not exist'}); remove it or choose another path`);
      }
      throw wrapSystemError(err, `checking ${req.to}`);
    }
  }
  const via = path === req.to ? '' : ` (a symlink to ${path})`;
  if (existing.isDirectory()) throw new BlockrepError('RESTORE_TARGET', `${req.to}${via} is a directory; give the path of the image file to write`);
  if (!existing.isFile() && !existing.isBlockDevice()) {
    const what = existing.isCharacterDevice() ? 'a character device' : existing.isFIFO() ? 'a FIFO' : existing.isSocket() ? 'a socket' : 'not a regular file';
    throw new BlockrepError('RESTORE_TARGET', `${req.to}${via} is ${what}: a restore writes only a regular file or a block device, and leaves this one alone; choose another path`);
  }
  if (!req.force) throw new BlockrepError('RESTORE_TARGET', `${req.to}${via} already exists; choose a new path or pass --force to replace it`);
  return existing.isBlockDevice() ? { kind: 'block-device', path, stats: existing } : { kind: 'file', path };
}

async function openForWrite(path: string, flags: number, mode: number): Promise<FileHandle> {
  try {
    return await open(path, flags, mode);
  } catch (err) {
    throw wrapSystemError(err, `opening ${path} for writing`);
  }
}

function rawSink(fh: FileHandle, target: string, how: { writeZeros: boolean; temp?: string }): BlockSink {
  let zeros: Buffer | undefined;
  return {
    async write(offset, data, length) {
      let buf = data;
      if (!buf) {
        // A new file is already zero there (sparse); a device is not.
        if (!how.writeZeros) return;
        if (!zeros || zeros.length < length) zeros = Buffer.alloc(length);
        buf = zeros.subarray(0, length);
      }
      try {
        let done = 0;
        while (done < buf.length) done += (await fh.write(buf, done, buf.length - done, offset + done)).bytesWritten;
      } catch (err) {
        throw wrapSystemError(err, `writing ${target}`);
      }
    },
    async commit() {
      try {
        await fh.sync();
        await fh.close();
        if (how.temp) await rename(how.temp, target);
      } catch (err) {
        throw wrapSystemError(err, `finishing ${target}`);
      }
    },
    async abort() {
      await fh.close().catch(() => undefined);
      if (how.temp) await unlink(how.temp).catch(() => undefined);
    },
  };
}
