import { BlockrepError } from '../shared/blockrep-error.js';
import { ImageFile } from './image-file.js';
import type { Extent, ImageFormat, ImageReader } from './image-reader.js';
import { pushExtent, checkExtentsRange, checkReadRange } from './reader-ranges.js';
import { loadSeekAddon, type SeekAddon } from './native-seek.js';

const SECTOR_BYTES = 512;

export interface RawReaderOptions {
  /**
   * Find holes with SEEK_DATA/SEEK_HOLE (default: when the native addon is loaded). With
   * false, extents() reports everything as data.
   */
  detectHoles?: boolean;
  /** See ImageFileOptions.syncReads. */
  syncReads?: boolean;
}

/**
 * A raw image: a regular file or a block device whose bytes are the guest's bytes.
 *
 * Like QEMU, the virtual size is the file size rounded up to a whole 512-byte sector and the
 * rounded-up tail reads as zeros, so a raw image (or raw backing file) reads exactly as
 * `qemu-img convert -O raw` writes it.
 */
export class RawReader implements ImageReader {
  readonly format: ImageFormat = 'raw';
  readonly virtualSize: number;
  private seekAddon: SeekAddon | null;

  private constructor(
    private readonly file: ImageFile,
    options: RawReaderOptions,
  ) {
    this.virtualSize = Math.ceil(file.fileBytes / SECTOR_BYTES) * SECTOR_BYTES;
    this.seekAddon = options.detectHoles === false ? null : loadSeekAddon();
  }

  get path(): string {
    return this.file.path;
  }

  static async open(path: string, options: RawReaderOptions = {}): Promise<RawReader> {
    return RawReader.fromFile(await ImageFile.open(path, `image ${path}`, { syncReads: options.syncReads === true }), options);
  }

  /** Takes ownership of an already opened file (openImage opens it once to detect its format). */
  static fromFile(file: ImageFile, options: RawReaderOptions = {}): RawReader {
    return new RawReader(file, options);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkReadRange(this, buf, offset);
    const fileBytes = this.file.fileBytes;
    const inFile = Math.max(0, Math.min(buf.byteLength, fileBytes - offset));
    if (inFile > 0) {
      const n = await this.file.readUpTo(buf, 0, inFile, offset);
      if (n !== inFile) {
        throw new BlockrepError(
          'IMAGE_UNREADABLE',
          `${this.path}: the file ended at ${offset + n} bytes while reading, but was ${fileBytes} bytes when opened; it shrank during the read`,
        );
      }
    }
    // The tail of the last partial sector (see the class comment).
    if (inFile < buf.byteLength) buf.fill(0, inFile);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkExtentsRange(this, offset, length);
    const end = offset + length;
    const out: Extent[] = [];
    if (length === 0) return out;
    const dataEnd = Math.min(end, this.file.fileBytes);
    const holes = this.seekAddon === null ? null : this.findData(offset, dataEnd, out);
    if (holes === null) {
      out.length = 0;
      if (offset < dataEnd) pushExtent(out, offset, dataEnd - offset, 'data');
    }
    const tail = Math.max(offset, dataEnd);
    if (tail < end) pushExtent(out, tail, end - tail, 'zero');
    return out;
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  /**
   * Walks [offset, end) with SEEK_DATA/SEEK_HOLE, appending extents to `out`. Returns null
   * (and stops probing for good) when the file system or device does not support it.
   */
  private findData(offset: number, end: number, out: Extent[]): true | null {
    const addon = this.seekAddon;
    if (addon === null) return null;
    const fd = this.file.fd;
    let pos = offset;
    try {
      while (pos < end) {
        const data = addon.seek(fd, pos, addon.SEEK_DATA);
        if (data < 0 || data >= end) {
          pushExtent(out, pos, end - pos, 'zero');
          break;
        }
        if (data > pos) pushExtent(out, pos, data - pos, 'zero');
        let hole = addon.seek(fd, data, addon.SEEK_HOLE);
        // A file that shrank after open has no hole after `data`: treat the rest as data and
        // let read() report the shrinkage.
        if (hole < 0 || hole > end) hole = end;
        if (hole <= data) hole = end;
        pushExtent(out, data, hole - data, 'data');
        pos = hole;
      }
    } catch {
      // EINVAL and friends: no hole support here (some block devices, old file systems).
      this.seekAddon = null;
      return null;
    }
    return true;
  }
}
