import { createHash, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { z } from 'zod';
import { TOKEN_PATTERN } from '../protocol/index.js';
import { BlockrepError, systemErrorCode, wrapSystemError, diskIdProblem, writeFileDurably } from '../shared/index.js';
import { withTokensFileLock } from './tokens-file-lock.js';

/**
 * The server's access tokens, one JSON file that `blockrep token` edits and `blockrep serve`
 * re-reads when it changes. Only the SHA-256 of each secret is stored: the file lets nobody
 * in, and a secret is shown once, when it is made.
 *
 *   {"format":"blockrep-tokens","version":1,"tokens":[
 *     {"name":"web-nightly","hash":"<sha256 hex of the secret>","disks":["web01"],
 *      "rights":["read","write"],"created":"2026-11-26T03:35:04.123Z"}]}
 *
 * `disks` are prefixes of disk ids, matched segment by segment ("vm1" covers "vm1" and
 * "vm1/vda", not "vm10"); "*" covers every disk.
 */
export const TOKENS_FORMAT = 'blockrep-tokens';
export const ALL_DISKS = '*';
const MAX_TOKENS_FILE_BYTES = 1024 * 1024;

export const rightSchema = z.enum(['read', 'write', 'admin']);
export type Right = z.infer<typeof rightSchema>;

export const diskPrefixSchema = z
  .string()
  .max(200)
  .refine((p) => p === ALL_DISKS || diskIdProblem(p) === undefined, { message: 'a disk prefix is "*" or a disk id (letters, digits, ".", "_", "-", "/" between segments)' });

export const tokenNameSchema = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'a token name is 1 to 64 letters, digits, ".", "_" or "-"');

export const tokenEntrySchema = z
  .object({
    name: tokenNameSchema,
    hash: z.string().regex(/^[0-9a-f]{64}$/),
    disks: z.array(diskPrefixSchema).min(1).max(1000),
    rights: z.array(rightSchema).min(1).max(3),
    created: z.string().max(64),
  })
  .strict();
export type TokenEntry = z.infer<typeof tokenEntrySchema>;

export const tokensFileSchema = z
  .object({
    format: z.literal(TOKENS_FORMAT),
    version: z.literal(1),
    tokens: z.array(tokenEntrySchema).max(10_000),
  })
  .strict()
  .refine((f) => new Set(f.tokens.map((t) => t.name)).size === f.tokens.length, { message: 'token names must be unique' });
export type TokensFile = z.infer<typeof tokensFileSchema>;

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

export function newSecret(): string {
  const secret = `brt_${randomBytes(32).toString('base64url')}`;
  if (!TOKEN_PATTERN.test(secret)) throw new BlockrepError('INTERNAL', 'generated token has an unexpected form');
  return secret;
}

/** Reads and checks a tokens file; a missing file reads as empty when `allowMissing`. */
export async function readTokensFile(path: string, options: { allowMissing?: boolean } = {}): Promise<TokensFile> {
  let text: string;
  try {
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      if (size > MAX_TOKENS_FILE_BYTES) throw new BlockrepError('USAGE', `tokens file ${path} is larger than ${MAX_TOKENS_FILE_BYTES} bytes`);
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT' && options.allowMissing) return { format: TOKENS_FORMAT, version: 1, tokens: [] };
    if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('USAGE', `tokens file ${path} does not exist (create a token with \`blockrep token create --tokens ${path} …\`)`);
    throw wrapSystemError(err, `reading tokens file ${path}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new BlockrepError('USAGE', `tokens file ${path} is not valid JSON`);
  }
  const parsed = tokensFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new BlockrepError('USAGE', `tokens file ${path} is not a blockrep tokens file: ${issue ? `${issue.path.join('.') || '(top)'}: ${issue.message}` : 'invalid'}`);
  }
  return parsed.data;
}

/** Replaces the tokens file atomically (temp file, fsync, rename), readable by its owner only. */
export async function writeTokensFile(path: string, file: TokensFile): Promise<void> {
  const checked = tokensFileSchema.parse(file);
  await writeFileDurably(path, `${JSON.stringify(checked, null, 2)}\n`, 0o600, `tokens file ${path}`);
}

export interface CreatedToken {
  token: Omit<TokenEntry, 'hash'>;
  /** Shown once; only its hash is stored. */
  secret: string;
}

/** Adds a token; the read-modify-write holds the tokens file's lock, so no concurrent change is lost. */
export function createToken(path: string, req: { name: string; disks: string[]; rights: Right[] }, now = new Date()): Promise<CreatedToken> {
  return withTokensFileLock(path, () => createTokenLocked(path, req, now));
}

async function createTokenLocked(path: string, req: { name: string; disks: string[]; rights: Right[] }, now: Date): Promise<CreatedToken> {
  const file = await readTokensFile(path, { allowMissing: true });
  if (file.tokens.some((t) => t.name === req.name)) {
    throw new BlockrepError('USAGE', `a token named ${req.name} already exists in ${path}; revoke it first or choose another name`);
  }
  const secret = newSecret();
  const entry: TokenEntry = {
    name: tokenNameSchema.parse(req.name),
    hash: hashSecret(secret),
    disks: [...new Set(req.disks)],
    rights: [...new Set(req.rights)],
    created: now.toISOString(),
  };
  await writeTokensFile(path, { ...file, tokens: [...file.tokens, tokenEntrySchema.parse(entry)] });
  const { hash: _hash, ...token } = entry;
  return { token, secret };
}

export function revokeToken(path: string, name: string): Promise<void> {
  return withTokensFileLock(path, async () => {
    const file = await readTokensFile(path);
    if (!file.tokens.some((t) => t.name === name)) throw new BlockrepError('TOKEN_NOT_FOUND', `no token named ${name} in ${path}`);
    await writeTokensFile(path, { ...file, tokens: file.tokens.filter((t) => t.name !== name) });
  });
}

export async function listTokens(path: string): Promise<Array<Omit<TokenEntry, 'hash'>>> {
  const file = await readTokensFile(path);
  return file.tokens.map(({ hash: _hash, ...rest }) => rest);
}
