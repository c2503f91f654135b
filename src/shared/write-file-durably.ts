import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { wrapSystemError } from './blockrep-error.js';

/**
 * Replaces a small file atomically and durably: a temporary file in the same folder (created
 * exclusively with `mode`, whatever the umask), fsync, rename, fsync of the folder. A reader sees
 * the old file or the new one, never half of one. `what` names the file in error messages.
 */
export async function writeFileDurably(path: string, text: string, mode: number, what: string): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    const fh = await open(temp, 'wx', mode);
    try {
      await fh.chmod(mode);
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, path);
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw wrapSystemError(err, `writing ${what}`);
  }
}
