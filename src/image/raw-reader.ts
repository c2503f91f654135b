import { BlockrepError } from '../shared/index.js';
import { ImageFile, type ImageFileOptions } from './image-file.js';
import type { Extent, ImageFormat, ImageReader } from './image-reader.js';
import { pushExtent, checkExtentsRange, checkReadRange } from './reader-ranges.js';

const SECTOR_BYTES = 512;

export type RawReaderOptions = ImageFileOptions;

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

  private constructor(private readonly file: ImageFile) {
    this.virtualSize = Math.ceil(file.fileBytes / SECTOR_BYTES) * SECTOR_BYTES;
  }

  get path(): string {
    return this.file.path;
  }

  static async open(path: string, options: RawReaderOptions = {}): Promise<RawReader> {
    return RawReader.fromFile(await ImageFile.open(path, `image ${path}`, options));
  }

  /** Takes ownership of an already opened file (openImage opens it once to detect its format). */
  static fromFile(file: ImageFile): RawReader {
    return new RawReader(file);
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
    const dataEnd = Math.min(end, this.file.fileBytes);
    this.file.mapHoles(offset, dataEnd, (at, bytes, kind) => pushExtent(out, at, bytes, kind));
    // The rounded-up tail of the last sector.
    const tail = Math.max(offset, dataEnd);
    if (tail < end) pushExtent(out, tail, end - tail, 'zero');
    return out;
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
