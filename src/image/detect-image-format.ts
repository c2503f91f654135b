import { BlockrepError } from '../shared/index.js';
import { QCOW2_MAGIC_BYTES } from './qcow2-limits.js';
import type { ImageFile } from './image-file.js';
import type { ImageFormat } from './image-reader.js';

/**
 * Format detection from the first bytes of a file: qcow2 by its magic, everything else raw —
 * except the magics of other image formats, which are refused rather than backed up as raw
 * bytes that no VM could boot from. Passing an explicit format skips detection.
 *
 * Detection trusts the file's content. A raw disk whose guest wrote a qcow2 header at
 * sector 0 would be read as qcow2 (and its backing file followed), exactly as QEMU's own
 * probing would: callers that know the format (a live VM's block node does) should pass it.
 */
export const DETECT_BYTES = 512;

interface Magic {
  name: string;
  offset: number;
  bytes: Uint8Array;
}

const ascii = (s: string): Uint8Array => Buffer.from(s, 'latin1');

/** Formats QEMU can read but blockrep does not; seen only to refuse them by name. */
const foreignMagics: Magic[] = [
  { name: 'QED', offset: 0, bytes: ascii('QED\0') },
  { name: 'VMDK', offset: 0, bytes: ascii('KDMV') },
  { name: 'VMDK (descriptor)', offset: 0, bytes: ascii('# Disk DescriptorFile') },
  { name: 'VDI', offset: 64, bytes: Uint8Array.of(0x7f, 0x10, 0xda, 0xbe) },
  { name: 'VHDX', offset: 0, bytes: ascii('vhdxfile') },
  { name: 'VHD (dynamic)', offset: 0, bytes: ascii('conectix') },
];


export type SniffResult = { format: ImageFormat } | { foreign: string };

/** Classifies the first bytes of a file (at least DETECT_BYTES, or the whole file if shorter). */
export function sniffImageFormat(head: Uint8Array): SniffResult {
  if (startsWith(head, 0, QCOW2_MAGIC_BYTES)) return { format: 'qcow2' };
  for (const magic of foreignMagics) {
    if (startsWith(head, magic.offset, magic.bytes)) return { foreign: magic.name };
  }
  return { format: 'raw' };
}

/** Detects the format of an open file, refusing other image formats with IMAGE_UNSUPPORTED. */
export async function detectImageFormat(file: ImageFile): Promise<ImageFormat> {
  const head = Buffer.alloc(Math.min(DETECT_BYTES, file.fileBytes));
  const n = await file.readUpTo(head, 0, head.byteLength, 0);
  const sniffed = sniffImageFormat(head.subarray(0, n));
  if ('foreign' in sniffed) {
    throw new BlockrepError(
      'IMAGE_UNSUPPORTED',
      `${file.path} looks like a ${sniffed.foreign} image; blockrep reads raw and qcow2 images only (convert it with qemu-img convert -O qcow2, or give its format as raw to copy its bytes as they are)`,
      { details: { path: file.path, detected: sniffed.foreign } },
    );
  }
  return sniffed.format;
}

function startsWith(buf: Uint8Array, offset: number, magic: Uint8Array): boolean {
  if (buf.byteLength < offset + magic.byteLength) return false;
  for (let i = 0; i < magic.byteLength; i++) if (buf[offset + i] !== magic[i]) return false;
  return true;
}
