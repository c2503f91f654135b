import { hostname, userInfo } from 'node:os';
import { createKeyFile, keyFileSchema, openKeyFile, type KeyFile } from '../crypto/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { KEYS_PREFIX } from './repository-config.js';
import type { Repository } from './repository.js';

/**
 * The key files of an encrypted repository (`keys/<id>`, crypto/key-file.ts): each wraps the
 * one master key under one passphrase. Unlocking tries each file; adding one needs the
 * repository unlocked (the master key), removing one needs only its id.
 */
const MAX_KEY_FILE_BYTES = 16 * 1024;
const MAX_KEY_FILES = 256;

export function keyFileKey(id: string): string {
  if (!/^[0-9a-f]{16}$/.test(id)) throw new BlockrepError('USAGE', `${JSON.stringify(id)} is not a key id (16 hex digits, as \`blockrep key list\` shows them)`);
  return `${KEYS_PREFIX}${id}`;
}

/** Who adds a key, for `key list`: user@host unless a label is given. */
export function defaultKeyLabel(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {}
  return `${user}@${hostname()}`;
}

/** The repository's key files, oldest first. A file that is not a key file is REPO_CORRUPT. */
export async function listKeyFiles(repo: Repository): Promise<KeyFile[]> {
  const files: KeyFile[] = [];
  for await (const obj of repo.backend.list(KEYS_PREFIX)) {
    const id = obj.key.slice(KEYS_PREFIX.length);
    if (!/^[0-9a-f]{16}$/.test(id)) continue;
    if (obj.size > MAX_KEY_FILE_BYTES) throw new BlockrepError('REPO_CORRUPT', `${obj.key}: ${obj.size} bytes is not a key file`);
    if (files.length >= MAX_KEY_FILES) throw new BlockrepError('REPO_CORRUPT', `more than ${MAX_KEY_FILES} key files under ${KEYS_PREFIX}`);
    let raw: Buffer;
    try {
      raw = await repo.backend.read(obj.key);
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'NOT_FOUND') continue; // removed meanwhile
      throw err;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    const file = keyFileSchema.safeParse(parsed);
    if (!file.success || file.data.id !== id || file.data.repository !== repo.config.id) throw new BlockrepError('REPO_CORRUPT', `${obj.key} is not a key file of this repository`);
    files.push(file.data);
  }
  return files.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
}

/**
 * Unlocks the repository with the first key file `passphrase` opens; returns that key's id.
 * WRONG_PASSWORD when none does.
 */
export async function unlockWithPassphrase(repo: Repository, passphrase: string): Promise<string> {
  const files = await listKeyFiles(repo);
  if (files.length === 0) {
    throw new BlockrepError('WRONG_PASSWORD', `repository ${repo.location} has no key files left: add one from the exported master key (blockrep key add --from-export FILE)`);
  }
  for (const file of files) {
    const master = await openKeyFile(file, passphrase);
    if (master !== undefined) {
      repo.unlock(master);
      return file.id;
    }
  }
  throw new BlockrepError('WRONG_PASSWORD', `the passphrase opens none of the ${files.length} key${files.length === 1 ? '' : 's'} of repository ${repo.location}`);
}

/** Adds a key file for `passphrase` to an unlocked repository; returns it. */
export async function addKeyFile(repo: Repository, passphrase: string, label: string, options: { scrypt?: { N: number; r: number; p: number } } = {}): Promise<KeyFile> {
  const file = await createKeyFile({
    masterKey: repo.unlockedMasterKey(),
    passphrase,
    repository: repo.config.id,
    label,
    now: new Date(repo.clock.now()),
    ...(options.scrypt ? { scrypt: options.scrypt } : {}),
  });
  await repo.backend.write(keyFileKey(file.id), Buffer.from(`${JSON.stringify(file, null, 2)}\n`), { exclusive: true });
  return file;
}

/**
 * Removes key file `id`. The last one goes only with `allowLast`: afterwards only the exported
 * master key opens the repository.
 */
export async function removeKeyFile(repo: Repository, id: string, options: { allowLast?: boolean } = {}): Promise<void> {
  const files = await listKeyFiles(repo);
  if (!files.some((f) => f.id === id)) throw new BlockrepError('KEY_NOT_FOUND', `repository ${repo.location} has no key ${id} (see blockrep key list)`);
  if (files.length === 1 && !options.allowLast) {
    throw new BlockrepError('USAGE', `key ${id} is the repository's last key: without it only the exported master key opens the repository; add --force if that is what you mean`);
  }
  await repo.backend.remove(keyFileKey(id));
}

/**
 * Unlocks the repository with a master key given whole (`key add --from-export`), checked
 * against the first manifest found: a key that does not open it is WRONG_PASSWORD.
 */
export async function unlockWithMasterKey(repo: Repository, masterKey: Uint8Array): Promise<void> {
  repo.unlock(masterKey);
  for (const disk of await repo.listDisks()) {
    const version = await repo.latestVersion(disk);
    if (version === undefined) continue;
    try {
      await repo.versionHeader(disk, version);
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'REPO_CORRUPT') throw new BlockrepError('WRONG_PASSWORD', `the master key does not open the manifests of repository ${repo.location}`, { cause: err });
      throw err;
    }
    return;
  }
}
