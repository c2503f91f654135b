import { join } from 'node:path';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer } from '../support/blockrep-server.js';
import { tempDir } from '../support/temp-dir.js';
import { describeBackendConformance } from './backend-conformance.js';

/** The same cases as LocalBackend, through a real `blockrep serve` (with tokens) on loopback. */
describeBackendConformance('HttpBackend against blockrep serve', async () => {
  const dir = await tempDir('blockrep-http-backend-');
  process.env.BLOCKREP_CACHE_DIR = join(dir, 'cache');
  const tokensFile = join(dir, 'tokens.json');
  // admin on "*": the suite lists and writes chunks/ directly.
  const { secret } = await createToken(tokensFile, { name: 'conformance', disks: ['*'], rights: ['read', 'write', 'admin'] });
  const server = await startServer({ root: join(dir, 'repo'), tokensFile });
  const backend = new HttpBackend({ url: server.url, token: secret });
  return {
    backend,
    close: async () => {
      await backend.close();
      await server.stop();
    },
  };
});
