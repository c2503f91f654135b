import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { wrapSystemError } from '../../shared/index.js';

/**
 * A request body that can be sent again: a streamed body (a manifest) is spooled to a temporary
 * file first, so a retry resends it whole, its length is known up front (Content-Length lets the
 * server refuse an oversized body before it arrives), and memory stays bounded.
 */
export interface ReplayableBody {
  readonly length: number;
  /** A fresh stream of the whole body, for one attempt. */
  open(): Readable;
  /** `length` bytes from `offset` (to compare with what the server holds). */
  read(offset: number, length: number): Promise<Buffer>;
  dispose(): Promise<void>;
}

export async function spoolBody(data: AsyncIterable<Uint8Array>, dir = tmpdir()): Promise<ReplayableBody> {
  const path = join(dir, `blockrep-upload-${process.pid}-${randomBytes(6).toString('hex')}`);
  let fh: FileHandle;
  try {
    fh = await open(path, 'wx+', 0o600);
  } catch (err) {
    throw wrapSystemError(err, `creating a temporary file in ${dir} (set TMPDIR to a writable folder)`);
  }
  let length = 0;
  try {
    for await (const piece of data) {
      let done = 0;
      while (done < piece.byteLength) {
        const { bytesWritten } = await fh.write(piece, done, piece.byteLength - done, length + done);
        done += bytesWritten;
      }
      length += piece.byteLength;
    }
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw wrapSystemError(err, `spooling an upload to ${path}`);
  }
  const handle = fh;
  return {
    length,
    open: () => createReadStream(path, { highWaterMark: 1024 * 1024 }),
    read: async (offset, n) => {
      const buf = Buffer.alloc(n);
      const { bytesRead } = await handle.read(buf, 0, n, offset);
      return buf.subarray(0, bytesRead);
    },
    dispose: async () => {
      await handle.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
    },
  };
}
