import { BlockrepError } from '../shared/index.js';
import type { Extent } from './image-reader.js';

/**
 * Argument checks and extent building shared by every reader. A bad range is a bug in the
 * caller, not a problem with the image, so it is reported as INTERNAL.
 */

interface Sized {
  readonly path: string;
  readonly virtualSize: number;
}

export function checkReadRange(reader: Sized, buf: Uint8Array, offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + buf.byteLength > reader.virtualSize) {
    throw new BlockrepError(
      'INTERNAL',
      `read of ${buf.byteLength} bytes at ${offset} is outside ${reader.path} (${reader.virtualSize} bytes)`,
    );
  }
}

export function checkExtentsRange(reader: Sized, offset: number, length: number): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > reader.virtualSize
  ) {
    throw new BlockrepError(
      'INTERNAL',
      `extents of ${length} bytes at ${offset} are outside ${reader.path} (${reader.virtualSize} bytes)`,
    );
  }
}

/** Appends [offset, offset + length) to `out`, merging it into the last extent if that is contiguous and of the same kind. */
export function pushExtent(out: Extent[], offset: number, length: number, kind: Extent['kind']): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last !== undefined && last.kind === kind && last.offset + last.length === offset) {
    last.length += length;
    return;
  }
  out.push({ offset, length, kind });
}

/** Appends every extent of `extents` (merging at the seams). */
export function pushExtents(out: Extent[], extents: readonly Extent[]): void {
  for (const e of extents) pushExtent(out, e.offset, e.length, e.kind);
}
