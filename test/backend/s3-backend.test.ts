import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe } from 'vitest';
import { S3Backend } from '../../src/backend/s3/s3-backend.js';
import { skipS3, startS3Server, type S3Server } from '../support/s3-server.js';
import { describeBackendConformance } from './backend-conformance.js';

/** The same cases as LocalBackend, against a real Ceph RGW on loopback, under a prefix of their own. */
let server: S3Server | undefined;
describe.skipIf(skipS3)('S3 (BLOCKREP_SKIP_S3_TESTS=1 skips)', () => {
  describeBackendConformance('S3Backend against Ceph RGW', async () => {
    const cache = await mkdtemp(join(tmpdir(), 'blockrep-s3-cache-'));
    process.env.BLOCKREP_CACHE_DIR = cache;
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
        await rm(cache, { recursive: true, force: true });
      },
    };
  });
});
