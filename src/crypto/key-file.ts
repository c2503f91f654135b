import { randomBytes, scrypt as scryptCb, timingSafeEqual, createHmac } from 'node:crypto';
import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';
import { MASTER_KEY_BYTES } from './repository-keys.js';
import { openSealed, SEAL_OVERHEAD, sealInto } from './object-seal.js';

function scrypt(password: string, salt: Buffer, keylen: number, options: { N: number; r: number; p: number; maxmem: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key))));
}

/**
 * A key file (`keys/<id>` in the repository) holds the master key wrapped under one passphrase.
 * The passphrase is stretched with scrypt (memory-hard; in Node's own crypto, so no native
 * dependency to build or trust), parameters stored in the file so that later files can use
 * more; the master key is sealed with AES-256-GCM under the result, with the repository id and
 * the key id as associated data (a key file moved to another repository or renamed does not open).
 */
export const KEY_FILE_FORMAT = 'blockrep-key';
/** scrypt N = 2^16, r = 8: 64 MiB of memory and about half a second on one core of a 2020s server. */
export const DEFAULT_SCRYPT = { N: 2 ** 16, r: 8, p: 1 } as const;
/** The most memory a key file may ask scrypt for (N·r·128 bytes): 1 GiB. */
const MAX_SCRYPT_BYTES = 1024 * 1024 * 1024;

const base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/).max(4096);

export const keyFileSchema = z
  .object({
    format: z.literal(KEY_FILE_FORMAT),
    version: z.literal(1),
    id: z.string().regex(/^[0-9a-f]{16}$/),
    repository: z.string().regex(/^[0-9a-f]{32}$/),
    createdAt: z.string().max(64),
    /** Who added it, for `key list`: the host and user that ran `key add`, or a label. */
    label: z.string().max(200),
    kdf: z
      .object({
        name: z.literal('scrypt'),
        N: z.number().int().min(2 ** 14).max(2 ** 30),
        r: z.number().int().min(1).max(64),
        p: z.number().int().min(1).max(16),
        salt: base64,
      })
      .strict()
      .refine((k) => Number.isInteger(Math.log2(k.N)) && 128 * k.N * k.r <= MAX_SCRYPT_BYTES, 'N must be a power of two and N·r·128 at most 1 GiB'),
    /** nonce ‖ sealed master key ‖ tag (object-seal.ts), base64. */
    wrapped: base64,
  })
  .strict();

export type KeyFile = z.infer<typeof keyFileSchema>;

export function newKeyId(): string {
  return randomBytes(8).toString('hex');
}

export function newMasterKey(): Uint8Array {
  return new Uint8Array(randomBytes(MASTER_KEY_BYTES));
}

async function stretch(passphrase: string, kdf: KeyFile['kdf']): Promise<Buffer> {
  return scrypt(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 32, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 128 * kdf.N * kdf.r + 16 * 1024 * 1024 });
}

function wrapAad(repository: string, id: string): Buffer {
  return Buffer.from(`${KEY_FILE_FORMAT} v1 ${repository} ${id}`, 'utf8');
}

export async function createKeyFile(options: {
  masterKey: Uint8Array;
  passphrase: string;
  repository: string;
  label: string;
  now: Date;
  scrypt?: { N: number; r: number; p: number };
}): Promise<KeyFile> {
  if (options.passphrase === '') throw new BlockrepError('USAGE', 'an empty passphrase protects nothing; choose one');
  const params = options.scrypt ?? DEFAULT_SCRYPT;
  const id = newKeyId();
  const kdf = { name: 'scrypt' as const, ...params, salt: randomBytes(16).toString('base64') };
  const wrapped = Buffer.allocUnsafe(MASTER_KEY_BYTES + SEAL_OVERHEAD);
  sealInto(await stretch(options.passphrase, kdf), options.masterKey, wrapAad(options.repository, id), wrapped, 0);
  return keyFileSchema.parse({
    format: KEY_FILE_FORMAT,
    version: 1,
    id,
    repository: options.repository,
    createdAt: options.now.toISOString(),
    label: options.label.slice(0, 200),
    kdf,
    wrapped: wrapped.toString('base64'),
  });
}

/** The master key if `passphrase` opens this key file, else undefined. */
export async function openKeyFile(file: KeyFile, passphrase: string): Promise<Uint8Array | undefined> {
  const opened = openSealed(await stretch(passphrase, file.kdf), Buffer.from(file.wrapped, 'base64'), wrapAad(file.repository, file.id));
  return opened?.length === MASTER_KEY_BYTES ? new Uint8Array(opened) : undefined;
}

/** A short check value of a master key (for `key export` and its import): not the key. */
export function masterKeyCheck(masterKey: Uint8Array): string {
  return createHmac('sha256', masterKey).update('blockrep master key check').digest('hex').slice(0, 16);
}

export function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}
