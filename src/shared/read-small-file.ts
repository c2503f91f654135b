import { open } from 'node:fs/promises';

/**
 * Reads a file that should be small (a token, a certificate, a job config) without trusting its
 * size: at most `maxBytes + 1` bytes are read, so /dev/zero, a FIFO or a huge file costs no
 * more memory than the cap. Over the cap: an error with code EFBIG and a message that says so.
 * Other failures are the system's errors (ENOENT, EACCES, EISDIR…), for the caller to word.
 */
export async function readSmallFile(path: string, maxBytes: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(maxBytes + 1);
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await fh.read(buf, done, buf.length - done, null);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done > maxBytes) throw Object.assign(new Error(`it is larger than ${maxBytes} bytes`), { code: 'EFBIG' });
    return buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}
