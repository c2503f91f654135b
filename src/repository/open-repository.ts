import { resolve } from 'node:path';
import { type Backend, LocalBackend, RateLimitedBackend } from '../backend/index.js';
import { RateLimiter, BlockrepError } from '../shared/index.js';
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
}

function limited(backend: Backend, bwlimit: number | undefined): Backend {
  // One limiter per direction for the whole process: every request shares the link.
  return bwlimit === undefined ? backend : new RateLimitedBackend(backend, new RateLimiter(bwlimit), new RateLimiter(bwlimit));
}

/** REPO is a directory (the embedded default) or an http(s):// URL of a `blockrep serve`. */
export async function openRepository(location: string, options: OpenRepositoryOptions = {}): Promise<Repository> {
  // An empty path would resolve to the working directory and make a repository there.
  if (location.trim() === '') throw new BlockrepError('USAGE', '--repo needs a repository: a directory or an http(s):// URL, not an empty string');
  if (/^https?:\/\//i.test(location)) {
    // Loaded only for a server: undici and the HTTP client cost every local run ~0.2 s of start-up.
    const [{ HttpBackend }, { loadAccessToken, readCaFile }] = await Promise.all([
      import('../backend/http/index.js'),
      import('../backend/http/index.js'),
    ]);
    const token = await loadAccessToken(options.tokenFile === undefined ? {} : { tokenFile: options.tokenFile });
    const ca = options.cacert === undefined ? undefined : await readCaFile(options.cacert);
    if (ca !== undefined && !/^https:/i.test(location)) throw new BlockrepError('USAGE', '--cacert applies to https:// repositories only');
    const backend = new HttpBackend({ url: location, ...(token !== undefined ? { token } : {}), ...(ca !== undefined ? { ca } : {}) });
    try {
      return await Repository.open(limited(backend, options.bwlimit), { create: options.create ?? false });
    } catch (err) {
      await backend.close().catch(() => undefined);
      throw err;
    }
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new BlockrepError('USAGE', `repository URLs are http:// or https://, not ${location.split('://')[0]}://`);
  }
  if (options.tokenFile !== undefined || options.cacert !== undefined) {
    throw new BlockrepError('USAGE', '--token-file and --cacert apply to http(s):// repositories only');
  }
  return Repository.open(limited(new LocalBackend(resolve(location)), options.bwlimit), options.create ? { create: true } : {});
}
