import { realpath } from 'node:fs/promises';
import { BlockrepError } from '../shared/index.js';
import { detectImageFormat } from './detect-image-format.js';
import { ImageFile } from './image-file.js';
import type { ImageFormat, ImageReader, ImageSpec } from './image-reader.js';
import { NbdImageReader } from './nbd-image-reader.js';
import { Qcow2Reader } from './qcow2-reader.js';
import { RawReader } from './raw-reader.js';
import { backingImageFormat, resolveBackingFile } from './resolve-backing-file.js';

/**
 * Backing chains deeper than this are refused: each layer holds a file descriptor in every
 * scan worker. Far beyond real chains (QEMU itself sets no limit).
 */
export const MAX_BACKING_CHAIN_DEPTH = 1000;

/**
 * Opens an image and its whole backing chain and returns a reader of the guest-visible bytes.
 *
 * - Format: spec.format if given, else detected (qcow2 magic, else raw; other image formats
 *   are refused). Backing files use the format their overlay records (backing format header
 *   extension), else detection.
 * - Backing names: relative to the directory of the image that names them, absolute as is.
 * - Errors: IMAGE_NOT_FOUND naming the missing image or backing file (and which image names
 *   it), BACKING_LOOP when a file reappears in its own chain (compared by realpath), plus the
 *   readers' IMAGE_CORRUPT / IMAGE_UNSUPPORTED. Whatever was opened is closed on error.
 */
export async function openImage(spec: ImageSpec, options: OpenImageOptions = {}): Promise<ImageReader> {
  if (spec.nbd) return NbdImageReader.open(spec.nbd, spec.path);
  return openLayer(spec.path, spec.format, `image ${spec.path}`, [], options);
}

export interface OpenImageOptions {
  /**
   * Blocking reads on the calling thread for every file of the chain (see
   * ImageFileOptions.syncReads): for scan worker threads over page-cached images. Default:
   * Node's asynchronous reads.
   */
  syncReads?: boolean;
  /** Find holes in raw files and in qcow2 host files (default true; needs the native addon). */
  detectHoles?: boolean;
}

/** One layer of a chain, as probeImage() reports it (top image first). */
export interface ImageLayer {
  path: string;
  format: ImageFormat;
  virtualSize: number;
  /** qcow2 only. */
  clusterSize?: number;
  /** The backing file name as the image stores it (qcow2 only). */
  backingFile?: string;
  backingFormat?: string;
}

/** Describes an image and its backing chain (top first), checking it opens as openImage would. */
export async function probeImage(spec: ImageSpec | string): Promise<ImageLayer[]> {
  const reader = await openImage(typeof spec === 'string' ? { path: spec } : spec);
  try {
    const layers: ImageLayer[] = [];
    for (let r: ImageReader | null = reader; r !== null; r = r instanceof Qcow2Reader ? r.backing : null) {
      const layer: ImageLayer = { path: r.path, format: r.format, virtualSize: r.virtualSize };
      if (r instanceof Qcow2Reader) {
        layer.clusterSize = r.header.clusterSize;
        if (r.header.backingFile !== undefined) layer.backingFile = r.header.backingFile;
        if (r.header.backingFormat !== undefined) layer.backingFormat = r.header.backingFormat;
      }
      layers.push(layer);
    }
    return layers;
  } finally {
    await reader.close();
  }
}

/**
 * Opens `path` and, for qcow2, its backing chain below it. `above` holds the realpaths of the
 * images above this one (for loop detection) and their paths for the message.
 */
async function openLayer(
  path: string,
  format: ImageFormat | undefined,
  describe: string,
  above: { real: string; path: string }[],
  options: OpenImageOptions,
): Promise<ImageReader> {
  const file = await ImageFile.open(path, describe, options);
  let backing: ImageReader | null = null;
  try {
    const real = await realpath(path);
    if (above.some((layer) => layer.real === real)) {
      const chain = [...above.map((layer) => layer.path), path].join(' → ');
      throw new BlockrepError('BACKING_LOOP', `backing chain loops back on itself: ${chain}`, {
        details: { chain: [...above.map((layer) => layer.path), path] },
      });
    }
    if (above.length >= MAX_BACKING_CHAIN_DEPTH) {
      throw new BlockrepError('IMAGE_UNSUPPORTED', `backing chain of ${above[0]?.path ?? path} is deeper than ${MAX_BACKING_CHAIN_DEPTH} images`);
    }
    const detected = format ?? (await detectImageFormat(file));
    if (detected === 'raw') return RawReader.fromFile(file);

    const header = await Qcow2Reader.readHeader(file);
    if (header.backingFile !== undefined) {
      const backingPath = resolveBackingFile(path, header.backingFile);
      const backingFormat = backingImageFormat(path, header.backingFile, header.backingFormat);
      backing = await openLayer(
        backingPath,
        backingFormat,
        `backing file ${backingPath} (named '${header.backingFile}' by ${path})`,
        [...above, { real, path }],
        options,
      );
    }
    return await Qcow2Reader.fromFile(file, header, backing);
  } catch (err) {
    await backing?.close().catch(() => undefined);
    await file.close().catch(() => undefined);
    throw err;
  }
}
