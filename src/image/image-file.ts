import fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import { BlockrepError, systemErrorCode } from '../shared/index.js';
import { loadSeekAddon, type SeekAddon } from './native-seek.js';

export interface ImageFileOptions {
  /**
   * Read with blocking pread on the calling thread instead of Node's thread pool. About 4x
   * faster per call for page-cached data (no thread hop: ~30 µs saved per read), but it
   * blocks the thread for the duration of each read, so use it only in worker threads that
   * do nothing else while they wait.
   */
  syncReads?: boolean;
  /**
   * Find holes with SEEK_DATA/SEEK_HOLE (default: yes, when the native addon is loaded).
   * With false, mapHoles() reports everything as data.
   */
  detectHoles?: boolean;
}

export type PieceKind = 'data' | 'zero';

/**
 * One open file (or block device) that an image reader reads from: a kept-open descriptor
 * and positioned reads straight into the caller's buffer. Raw and qcow2 readers share it so
 * that open errors, short reads and sizes are handled in one place.
 */
export class ImageFile {
  private closed = false;
  /** Null once hole detection is off or turned out unsupported here. */
  private holeProbe: SeekAddon | null;

  private constructor(
    readonly path: string,
    readonly fd: number,
    /** Bytes in the file (for a block device: the device size) when it was opened. */
    readonly fileBytes: number,
    readonly isBlockDevice: boolean,
    /** See ImageFileOptions.syncReads. */
    readonly syncReads: boolean,
    detectHoles: boolean,
  ) {
    this.holeProbe = detectHoles ? loadSeekAddon() : null;
  }

  /**
   * Opens `path` read-only. `describe` names the file in errors (default "image PATH"; for a
   * backing file it says which image names it), so a user can tell which file of a chain is
   * missing.
   */
  static async open(path: string, describe = `image ${path}`, options: ImageFileOptions = {}): Promise<ImageFile> {
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        // O_NONBLOCK: opening a FIFO by mistake must not hang (it is refused below); regular
        // files and block devices ignore the flag for reads.
        fs.open(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK, (err, value) => (err ? reject(err) : resolve(value))),
      );
    } catch (err) {
      throw openError(err, path, describe);
    }
    try {
      const stat = await new Promise<fs.Stats>((resolve, reject) =>
        fs.fstat(fd, (err, value) => (err ? reject(err) : resolve(value))),
      );
      if (stat.isDirectory()) {
        throw new BlockrepError('IMAGE_UNREADABLE', `${describe} is a directory, not a disk image`);
      }
      const isBlockDevice = stat.isBlockDevice();
      if (!isBlockDevice && !stat.isFile()) {
        throw new BlockrepError('IMAGE_UNREADABLE', `${describe} is neither a regular file nor a block device`);
      }
      const fileBytes = isBlockDevice ? await blockDeviceBytes(fd, stat, path) : stat.size;
      return new ImageFile(path, fd, fileBytes, isBlockDevice, options.syncReads === true, options.detectHoles !== false);
    } catch (err) {
      fs.closeSync(fd);
      throw err instanceof BlockrepError ? err : openError(err, path, describe);
    }
  }

  /**
   * Reads `length` bytes into `buf` at `bufOffset` from file offset `position`, stopping early
   * only at end of file; returns the bytes read.
   */
  async readUpTo(buf: Uint8Array, bufOffset: number, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const n = this.syncReads
        ? this.readOnceSync(buf, bufOffset + done, length - done, position + done)
        : await this.readOnce(buf, bufOffset + done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /**
   * Reads exactly `length` bytes into `buf` at `bufOffset`; a read past the end of the file
   * means the image is truncated, reported as IMAGE_CORRUPT naming `what`.
   */
  async readExact(buf: Uint8Array, bufOffset: number, length: number, position: number, what: string): Promise<void> {
    if (position + length > this.fileBytes) throw this.pastEnd(what, position, length);
    const n = await this.readUpTo(buf, bufOffset, length, position);
    if (n !== length) throw this.pastEnd(what, position, length);
  }

  /** The error for `what` (at `position`, `length` bytes) lying beyond the end of the file. */
  pastEnd(what: string, position: number, length: number): BlockrepError {
    return new BlockrepError(
      'IMAGE_CORRUPT',
      `${this.path}: ${what} at file offset ${position} (${length} bytes) lies past the end of the file (${this.fileBytes} bytes); the image is truncated or corrupt`,
      { details: { path: this.path, position, length } },
    );
  }

  /**
   * Splits file range [start, end) into data and holes ('zero') with SEEK_DATA/SEEK_HOLE,
   * calling `emit` for each piece in order; the pieces cover the range exactly. Without hole
   * support (no addon, a file system or device that refuses) the whole range is data.
   * Holes are never read, so a 1 TiB sparse file is mapped in microseconds.
   */
  mapHoles(start: number, end: number, emit: (offset: number, length: number, kind: PieceKind) => void): void {
    if (start >= end) return;
    const pieces = this.holeProbe === null ? null : this.findHoles(this.holeProbe, start, end);
    if (pieces === null) {
      emit(start, end - start, 'data');
      return;
    }
    for (let i = 0; i < pieces.length; i += 3) emit(pieces[i] ?? 0, pieces[i + 1] ?? 0, pieces[i + 2] === 1 ? 'zero' : 'data');
  }

  /** Flat [offset, length, isHole] triples, or null when the kernel refuses (probing then stops for good). */
  private findHoles(addon: SeekAddon, start: number, end: number): number[] | null {
    const pieces: number[] = [];
    const fd = this.fd;
    let pos = start;
    try {
      while (pos < end) {
        const data = addon.seek(fd, pos, addon.SEEK_DATA);
        if (data < 0 || data >= end) {
          pieces.push(pos, end - pos, 1);
          break;
        }
        if (data > pos) pieces.push(pos, data - pos, 1);
        let hole = addon.seek(fd, data, addon.SEEK_HOLE);
        // No hole after `data` (the file shrank after open): the rest is data, and read()
        // reports the shrinkage.
        if (hole <= data || hole > end) hole = end;
        pieces.push(data, hole - data, 0);
        pos = hole;
      }
    } catch {
      // EINVAL and friends: no SEEK_DATA support here (old file systems, some devices).
      this.holeProbe = null;
      return null;
    }
    return pieces;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve, reject) => fs.close(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  private readOnce(buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    return new Promise<number>((resolve, reject) =>
      fs.read(this.fd, buf, offset, length, position, (err, bytesRead) => {
        if (err) reject(this.readError(err, length, position));
        else resolve(bytesRead);
      }),
    );
  }

  private readOnceSync(buf: Uint8Array, offset: number, length: number, position: number): number {
    try {
      return fs.readSync(this.fd, buf, offset, length, position);
    } catch (err) {
      throw this.readError(err, length, position);
    }
  }

  private readError(err: unknown, length: number, position: number): BlockrepError {
    const text = err instanceof Error ? err.message : String(err);
    return new BlockrepError('IMAGE_UNREADABLE', `${this.path}: read of ${length} bytes at file offset ${position} failed: ${text}`, { cause: err });
  }
}

function openError(err: unknown, path: string, describe: string): BlockrepError {
  const sys = systemErrorCode(err);
  const text = err instanceof Error ? err.message : String(err);
  if (sys === 'ENOENT' || sys === 'ENOTDIR') {
    return new BlockrepError('IMAGE_NOT_FOUND', `${describe} not found`, { cause: err, details: { path } });
  }
  if (sys === 'EACCES' || sys === 'EPERM') {
    return new BlockrepError('IMAGE_UNREADABLE', `${describe} cannot be opened: permission denied`, { cause: err, details: { path } });
  }
  return new BlockrepError('IMAGE_UNREADABLE', `${describe} cannot be opened: ${text}`, { cause: err, details: { path } });
}

/**
 * fstat reports size 0 for a block device. lseek(SEEK_END) gives the size when the addon is
 * there; otherwise sysfs has it in 512-byte sectors at /sys/dev/block/MAJOR:MINOR/size.
 */
async function blockDeviceBytes(fd: number, stat: fs.Stats, path: string): Promise<number> {
  const addon = loadSeekAddon();
  if (addon) {
    try {
      const end = addon.seek(fd, 0, addon.SEEK_END);
      if (end >= 0) return end;
    } catch {
      // fall through to sysfs
    }
  }
  const bytes = await sysfsBlockDeviceBytes(stat.rdev);
  if (bytes !== undefined) return bytes;
  throw new BlockrepError('IMAGE_UNREADABLE', `cannot determine the size of block device ${path}`);
}

/** A block device's size from /sys/dev/block/MAJOR:MINOR/size (512-byte sectors), or undefined. */
export async function sysfsBlockDeviceBytes(rdev: number): Promise<number | undefined> {
  // Linux dev_t encoding (glibc's gnu_dev_major / gnu_dev_minor).
  const dev = BigInt(rdev);
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  try {
    const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
    if (Number.isSafeInteger(sectors) && sectors >= 0 && Number.isSafeInteger(sectors * 512)) return sectors * 512;
  } catch {
    // not Linux, or no sysfs: the caller reports it
  }
  return undefined;
}
