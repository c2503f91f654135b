import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { tempDir } from '../support/temp-dir.js';
import { describeBackendConformance } from './backend-conformance.js';

describeBackendConformance('LocalBackend', async () => {
  const backend = new LocalBackend(await tempDir('blockrep-local-backend-'));
  return { backend, close: () => backend.close() };
});
