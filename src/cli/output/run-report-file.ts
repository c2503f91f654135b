import { writeFileDurably } from '../../shared/index.js';

/**
 * Writes the run report file atomically (temporary file in the same folder, fsync, rename,
 * fsync of the folder): a monitoring script never reads half a report, and the previous
 * night's stays whole until tonight's replaces it.
 */
export async function writeReportFile(path: string, json: unknown): Promise<void> {
  await writeFileDurably(path, `${JSON.stringify(json, null, 2)}\n`, 0o644, `the report file ${path}`);
}
