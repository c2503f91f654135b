import { randomBytes } from 'node:crypto';
import type { Backend } from '../backend/index.js';
import { newMasterKey } from '../crypto/index.js';
import { BlockrepError, isBlockrepError, type Clock } from '../shared/index.js';
import { CONFIG_KEY, ENCRYPTED_FORMAT_VERSION, ENCRYPTION, KEYS_PREFIX, REPOSITORY_FORMAT, type RepositoryConfig } from './repository-config.js';
import { addKeyFile } from './repository-key-store.js';
import { Repository } from './repository.js';

/**
 * `blockrep init --encrypt`: makes an encrypted repository in an empty location, or turns the
 * empty plain repository a server made for itself into one. The key file is written first and
 * blockrep.json last, so an interrupted init leaves a plain empty repository (and a stray key
 * file that opens nothing), never an encrypted one without a key. Returns the repository
 * unlocked, and the id of its first key.
 */
export async function initEncryptedRepository(backend: Backend, options: { passphrase: string; label: string; clock: Clock; scrypt?: { N: number; r: number; p: number } }): Promise<{ repo: Repository; keyId: string }> {
  let existing: Repository | undefined;
  try {
    existing = await Repository.open(backend, { clock: options.clock });
  } catch (err) {
    if (!isBlockrepError(err) || err.code !== 'REPO_NOT_FOUND') throw err;
  }
  if (existing?.encrypted) throw new BlockrepError('EXISTS', `${backend.location} is already an encrypted repository (add a passphrase with blockrep key add)`);
  if (existing) {
    for (const prefix of ['disks/', 'chunks/', KEYS_PREFIX]) {
      for await (const _ of backend.list(prefix)) {
        throw new BlockrepError('USAGE', `${backend.location} already holds unencrypted backups; encryption applies to a new, empty repository`);
      }
    }
  } else {
    for await (const _ of backend.list('')) {
      throw new BlockrepError('USAGE', `${backend.location} is not empty and is not a blockrep repository; choose an empty or new folder`);
    }
  }
  const config: RepositoryConfig = {
    format: REPOSITORY_FORMAT,
    version: ENCRYPTED_FORMAT_VERSION,
    id: existing?.config.id ?? randomBytes(16).toString('hex'),
    createdAt: existing?.config.createdAt ?? new Date(options.clock.now()).toISOString(),
    encryption: ENCRYPTION,
  };
  const masterKey = newMasterKey();
  // The key file first, written under the config it will belong to (its id binds it).
  const draft = Repository.draft(backend, config, options.clock);
  draft.unlock(masterKey);
  const key = await addKeyFile(draft, options.passphrase, options.label, options.scrypt ? { scrypt: options.scrypt } : {});
  await backend.write(CONFIG_KEY, Buffer.from(`${JSON.stringify(config, null, 2)}\n`), existing ? {} : { exclusive: true });
  const repo = await Repository.open(backend, { clock: options.clock });
  if (!repo.encrypted) throw new BlockrepError('INTERNAL', `${backend.location}: blockrep.json did not take the encrypted configuration`);
  repo.unlock(masterKey);
  return { repo, keyId: key.id };
}
