import { resolve } from 'node:path';
import { type Backend, LocalBackend, RateLimitedBackend } from '../backend/index.js';
import { RateLimiter, BlockrepError, type SyncLevel } from '../shared/index.js';
import { unlockWithPassphrase } from './repository-key-store.js';
import { Repository } from './repository.js';

export interface OpenRepositoryOptions {
  /** Initialise an empty location (a directory; a server creates its repository itself). */
  create?: boolean;
  /** For http(s):// repositories: a file holding the access token (else BLOCKREP_TOKEN). */
  tokenFile?: string;
  /** For https:// repositories: the PEM file of the CA to trust. */
  cacert?: string;
  /** Bytes per second sent to and read from the repository (`--bwlimit`), local or remote. */
  bwlimit?: number;
  /** For s3:// repositories: the endpoint of a non-AWS server (else AWS_ENDPOINT_URL(_S3), else AWS). */
  s3Endpoint?: string;
  /**
   * For an encrypted repository: where its passphrase comes from (asked only if it is
   * encrypted). Without it an encrypted repository opens locked: listing only (KEY_REQUIRED).
   */
  passphrase?: () => Promise<string>;
  /**
   * For a directory: how new chunks are made durable before a version is published
   * (shared/sync-level.ts; default `filesystem`). A server or S3 decides that on its side.
   */
  syncLevel?: SyncLevel;
}

/** Unlocks an encrypted repository with the passphrase the options name, if any. */
async function unlocked(repo: Repository, options: OpenRepositoryOptions): Promise<Repository> {
  if (repo.encrypted && options.passphrase !== undefined) {
    try {
      await unlockWithPassphrase(repo, await options.passphrase());
    } catch (err) {
      await repo.backend.close().catch(() => undefined);
      throw err;
    }
  }
  return repo;
}

function limited(backend: Backend, bwlimit: number | undefined): Backend {
  // One limiter per direction for the whole process: every request shares the link.
  return bwlimit === undefined ? backend : new RateLimitedBackend(backend, new RateLimiter(bwlimit), new RateLimiter(bwlimit));
}

/** REPO is a directory (the embedded default), an http(s):// URL of a `blockrep serve`, or s3://BUCKET[/PREFIX]. */
export async function openRepository(location: string, options: OpenRepositoryOptions = {}): Promise<Repository> {
  return unlocked(await openRepositoryLocked(location, options), options);
}

/** The backend REPO names (rate-limited as asked), without opening a repository in it (`blockrep init`). */
export async function openBackend(location: string, options: OpenRepositoryOptions = {}): Promise<Backend> {
  // An empty path would resolve to the working directory and make a repository there.
  if (location.trim() === '') throw new BlockrepError('USAGE', '--repo needs a repository: a directory or an http(s):// URL, not an empty string');
  if (options.s3Endpoint !== undefined && !/^s3:\/\//i.test(location)) throw new BlockrepError('USAGE', '--s3-endpoint applies to s3:// repositories only');
  if (options.syncLevel !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new BlockrepError('USAGE', '--sync-level applies to a repository in a directory; a blockrep serve takes its own (serve --sync-level), and S3 makes every object durable when it answers');
  }
  if (/^s3:\/\//i.test(location)) {
    if (options.tokenFile !== undefined || options.cacert !== undefined) {
      throw new BlockrepError('USAGE', '--token-file and --cacert apply to http(s):// repositories; an s3:// repository takes its credentials from the AWS chain (AWS_ACCESS_KEY_ID…, AWS_PROFILE)');
    }
    // Loaded only for object storage: the AWS SDK costs every other run start-up time.
    const { S3Backend, parseS3Location } = await import('../backend/s3/index.js');
    const where = parseS3Location(location);
    const endpoint = s3EndpointFrom(options.s3Endpoint);
    return limited(new S3Backend({ ...where, endpoint }), options.bwlimit);
  }
  if (/^https?:\/\//i.test(location)) {
    // Loaded only for a server: undici and the HTTP client cost every local run ~0.2 s of start-up.
    const { HttpBackend, loadAccessToken, readCaFile } = await import('../backend/http/index.js');
    const token = await loadAccessToken(options.tokenFile === undefined ? {} : { tokenFile: options.tokenFile });
    const ca = options.cacert === undefined ? undefined : await readCaFile(options.cacert);
    if (ca !== undefined && !/^https:/i.test(location)) throw new BlockrepError('USAGE', '--cacert applies to https:// repositories only');
    return limited(new HttpBackend({ url: location, ...(token !== undefined ? { token } : {}), ...(ca !== undefined ? { ca } : {}) }), options.bwlimit);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new BlockrepError('USAGE', `repository URLs are http://, https:// or s3://, not ${location.split('://')[0]}://`);
  }
  if (options.tokenFile !== undefined || options.cacert !== undefined) {
    throw new BlockrepError('USAGE', '--token-file and --cacert apply to http(s):// repositories only');
  }
  return limited(new LocalBackend(resolve(location), options.syncLevel !== undefined ? { syncLevel: options.syncLevel } : {}), options.bwlimit);
}

async function openRepositoryLocked(location: string, options: OpenRepositoryOptions): Promise<Repository> {
  const backend = await openBackend(location, options);
  try {
    return await Repository.open(backend, { create: options.create ?? false });
  } catch (err) {
    await backend.close().catch(() => undefined);
    throw err;
  }
}

/** `--s3-endpoint`, else the AWS SDK's own variables; checked here so a typo is a usage error. */
function s3EndpointFrom(option: string | undefined): string | undefined {
  const [value, from] = option !== undefined ? [option, '--s3-endpoint'] : process.env.AWS_ENDPOINT_URL_S3 ? [process.env.AWS_ENDPOINT_URL_S3, 'AWS_ENDPOINT_URL_S3'] : [process.env.AWS_ENDPOINT_URL, 'AWS_ENDPOINT_URL'];
  if (value === undefined || value === '') return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new BlockrepError('USAGE', `${from} ${value} is not a URL: write e.g. http://127.0.0.1:7480 or https://s3.example.net`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BlockrepError('USAGE', `${from} must be an http:// or https:// URL, not ${value}`);
  if (url.pathname !== '/' || url.search !== '' || url.username !== '' || url.password !== '') {
    throw new BlockrepError('USAGE', `${from} is the server's address only (scheme, host, port): the bucket and prefix go in --repo s3://BUCKET/PREFIX`);
  }
  return url.origin;
}
