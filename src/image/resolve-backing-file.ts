import path from 'node:path';
import { BlockrepError } from '../shared/index.js';
import type { ImageFormat } from './image-reader.js';

/**
 * Where a qcow2 image's backing file is, as QEMU finds it: a relative name is relative to the
 * directory of the image that names it (as that image's path was given, not its realpath),
 * an absolute name is used as is, a "file:" prefix is dropped. Protocol names
 * ("nbd:…", "http://…") and "json:{…}" specifications are refused: blockrep reads local
 * files only.
 */
export function resolveBackingFile(imagePath: string, name: string): string {
  let file = name;
  if (file.startsWith('file:')) file = file.slice('file:'.length);
  else if (file.startsWith('json:') || hasProtocol(file)) {
    throw new BlockrepError(
      'IMAGE_UNSUPPORTED',
      `${imagePath}: backing file '${name}' is not a local file name; blockrep follows local backing files only`,
      { details: { path: imagePath, backingFile: name } },
    );
  }
  if (file === '') {
    throw new BlockrepError('IMAGE_CORRUPT', `${imagePath}: backing file name is empty`, { details: { path: imagePath } });
  }
  return path.isAbsolute(file) ? file : path.join(path.dirname(imagePath), file);
}

/** QEMU's path_has_protocol: a ':' before the first '/'. */
function hasProtocol(name: string): boolean {
  const colon = name.indexOf(':');
  if (colon < 0) return false;
  const slash = name.indexOf('/');
  return slash < 0 || colon < slash;
}

/**
 * The reader format for a backing format name from the qcow2 header extension; undefined
 * (detect from content) when the image does not record one.
 */
export function backingImageFormat(imagePath: string, backingFile: string, backingFormat: string | undefined): ImageFormat | undefined {
  switch (backingFormat) {
    case undefined:
      return undefined;
    case 'raw':
    case 'file': // QEMU's protocol driver: the file's bytes, as raw
    case 'host_device':
      return 'raw';
    case 'qcow2':
      return 'qcow2';
    default:
      throw new BlockrepError(
        'IMAGE_UNSUPPORTED',
        `${imagePath}: backing file '${backingFile}' has format '${backingFormat}'; blockrep reads raw and qcow2 images only`,
        { details: { path: imagePath, backingFile, backingFormat } },
      );
  }
}
