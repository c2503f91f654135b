import { randomBytes } from 'node:crypto';
import { describe } from 'vitest';
import { S3Backend } from '../../src/backend/s3/s3-backend.js';
import { skipS3, startS3Server, type S3Server } from '../support/s3-server.js';
import { tempDir } from '../support/temp-dir.js';
import { describeBackendConformance } from './backend-conformance.js';

/** The same cases as LocalBackend, against a real Ceph RGW on loopback, under a prefix of their own. */
let server: S3Server | undefined;
describe.skipIf(skipS3)('S3 (BLOCKREP_SKIP_S3_TESTS=1 skips)', () => {
  describeBackendConformance('S3Backend against Ceph RGW', async () => {
    process.env.BLOCKREP_CACHE_DIR = await tempDir('blockrep-s3-cache-');
    server = await startS3Server();
    const backend = new S3Backend({
      bucket: server.bucket,
      prefix: `conformance-${randomBytes(4).toString('hex')}/`,
      endpoint: server.endpoint,
      region: server.region,
      credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    });
    return {
      backend,
      close: async () => {
        await backend.close();
        await server?.stop();
      },
    };
  });
});
