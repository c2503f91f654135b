import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { wrapSystemError } from '../../shared/blockrep-error.js';

/**
 * Writes the run report file atomically (temporary file in the same folder, fsync, rename,
 * fsync of the folder): a monitoring script never reads half a report, and the previous
 * night's stays whole until tonight's replaces it.
 */
export async function writeReportFile(path: string, json: unknown): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(`${JSON.stringify(json, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw wrapSystemError(err, `writing the report file ${path}`);
  }
}
