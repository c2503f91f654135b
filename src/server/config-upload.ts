import { CONFIG_KEY, KEYS_PREFIX, keyFileKey, repositoryConfigSchema, type Repository } from '../repository/index.js';
import { keyFileSchema } from '../crypto/index.js';
import type { Backend } from '../backend/index.js';
import { BlockrepError } from '../shared/index.js';
import { readBody } from './http-io.js';
import type { RequestContext } from './request-context.js';

const MAX_CONFIG_BYTES = 4096;
const MAX_KEY_FILE_BYTES = 16 * 1024;

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

/**
 * PUT of blockrep.json: only to turn the empty plain repository this server made into an
 * encrypted one (`blockrep init --encrypt` over HTTP): same id, encrypted, and no disk, chunk
 * or other change yet. The server holds no key; it only stores what the client made.
 */
export async function receiveConfig(repo: Repository, store: Backend, ctx: RequestContext): Promise<number> {
  const body = await readBody(ctx, MAX_CONFIG_BYTES, 'blockrep.json');
  const next = repositoryConfigSchema.safeParse(parseJson(body));
  if (!next.success || next.data.encryption === undefined) throw new BlockrepError('BAD_REQUEST', 'blockrep.json is written only to make the repository encrypted (blockrep init --encrypt)');
  if (repo.encrypted) throw new BlockrepError('EXISTS', 'the repository is already encrypted');
  if (next.data.id !== repo.config.id) throw new BlockrepError('BAD_REQUEST', 'the repository id cannot change');
  for (const prefix of ['disks/', 'chunks/']) {
    for await (const _ of store.list(prefix)) throw new BlockrepError('BAD_REQUEST', 'the repository already holds unencrypted backups; encryption applies to an empty repository');
  }
  let keys = 0;
  for await (const _ of store.list(KEYS_PREFIX)) keys++;
  if (keys === 0) throw new BlockrepError('BAD_REQUEST', 'an encrypted repository needs a key file first (keys/<id>)');
  const stored = await store.write(CONFIG_KEY, body);
  await repo.reloadConfig();
  return stored;
}

/** PUT of a key file: a well-formed one of this repository, under its own id, never replaced. */
export async function receiveKeyFile(repo: Repository, store: Backend, ref: { key: string; keyId: string }, ctx: RequestContext): Promise<number> {
  const body = await readBody(ctx, MAX_KEY_FILE_BYTES, 'a key file');
  const file = keyFileSchema.safeParse(parseJson(body));
  if (!file.success || keyFileKey(file.data.id) !== ref.key || file.data.repository !== repo.config.id) {
    throw new BlockrepError('BAD_REQUEST', `${ref.key}: not a key file of this repository under its own id`);
  }
  return store.write(ref.key, body, { exclusive: true });
}
