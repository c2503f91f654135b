import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const START = fileURLToPath(new URL('../../scripts/s3/start-rgw.sh', import.meta.url));
const STOP = fileURLToPath(new URL('../../scripts/s3/stop-rgw.sh', import.meta.url));

/** A real S3 server (single-node Ceph RGW on loopback) that a test file started for itself. */
export interface S3Server {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** The AWS variables a blockrep process needs to reach the bucket. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * S3 tests need a real server and are not skipped silently: only BLOCKREP_SKIP_S3_TESTS=1 skips
 * them (a machine without Ceph's packages, which scripts/install-deps.sh installs).
 */
export const skipS3 = process.env.BLOCKREP_SKIP_S3_TESTS === '1';

// The SDK's notice that it will need Node 22 from 2027 (tests make clients of their own).
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

function run(file: string, env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('bash', [file], { env: { ...process.env, ...env }, timeout: 180_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Starts one RGW (~6 s) in a folder of its own, on free ports; stop() kills only its daemons. */
export async function startS3Server(): Promise<S3Server> {
  const dir = await mkdtemp(join(tmpdir(), 'blockrep-rgw-'));
  const envFile = join(dir, 's3.env');
  // Memstore keeps objects in RAM: 2 GiB is plenty for the tests and is only used as written.
  await run(START, { S3_DIR: join(dir, 'ceph'), S3_ENV_FILE: envFile, S3_MEM_BYTES: String(2 * 1024 ** 3) });
  const vars = Object.fromEntries(
    (await readFile(envFile, 'utf8'))
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  ) as Record<string, string>;
  const server: S3Server = {
    endpoint: vars.S3_ENDPOINT!,
    region: vars.S3_REGION!,
    accessKeyId: vars.S3_ACCESS_KEY!,
    secretAccessKey: vars.S3_SECRET_KEY!,
    bucket: vars.S3_BUCKET!,
    env: {
      AWS_ENDPOINT_URL: vars.S3_ENDPOINT!,
      AWS_REGION: vars.S3_REGION!,
      AWS_ACCESS_KEY_ID: vars.S3_ACCESS_KEY!,
      AWS_SECRET_ACCESS_KEY: vars.S3_SECRET_KEY!,
      // Never the tester's own AWS profile.
      AWS_PROFILE: '',
      AWS_CONFIG_FILE: join(dir, 'no-aws-config'),
      AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-aws-credentials'),
    },
    stop: async () => {
      await run(STOP, { S3_ENV_FILE: envFile });
      await rm(dir, { recursive: true, force: true });
    },
  };
  return server;
}
