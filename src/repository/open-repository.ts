import { resolve } from 'node:path';
import { LocalBackend } from '../backend/local/local-backend.js';
import { BlockrepError } from '../shared/blockrep-error.js';
import { Repository } from './repository.js';

/** REPO is a directory (the embedded default) or, later, an http(s):// URL of a `blockrep serve`. */
export async function openRepository(location: string, options: { create?: boolean } = {}): Promise<Repository> {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new BlockrepError('USAGE', `repository URLs (${location.split('://')[0]}://) are not supported by this build yet; use a local directory`);
  }
  return Repository.open(new LocalBackend(resolve(location)), options);
}
