/**
 * image — readers of raw files, block devices and qcow2 (with backing chains), all returning the
 * bytes `qemu-img convert -O raw` returns, and the qcow2 writer used by restores.
 * Invariants: bounded memory whatever the image size; damaged metadata is an IMAGE_* error.
 */
export { type Extent, type ImageFormat, type ImageReader, type ImageSpec } from './image-reader.js';
export { openImage } from './open-image.js';
export { Qcow2Writer } from './qcow2-writer.js';
