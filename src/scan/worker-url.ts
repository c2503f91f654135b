import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BlockrepError } from '../shared/index.js';

/**
 * Where the scan worker's script is. Worker threads run plain JavaScript, so:
 * - compiled (dist/scan/scan-image.js → this file is worker-url.js): ./scan-worker.js beside it;
 * - from TypeScript sources (vitest, which transforms only the main thread's imports): the
 *   compiled dist/scan/scan-worker.js, which the test command builds with tsc first.
 */
export function scanWorkerUrl(): URL {
  const here = import.meta.url;
  const url = here.endsWith('.ts') ? new URL('../../dist/scan/scan-worker.js', here) : new URL('./scan-worker.js', here);
  if (!existsSync(fileURLToPath(url))) {
    throw new BlockrepError('INTERNAL', `scan worker script ${fileURLToPath(url)} is missing; build with \`npx tsc -p .\``);
  }
  return url;
}
