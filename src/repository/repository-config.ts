import { z } from 'zod';

/**
 * The repository's own description, stored as `blockrep.json` at its root. Format version 1
 * is a plain repository; version 2 an encrypted one (`encryption` present), so that a blockrep
 * older than encryption refuses it (REPO_FORMAT) instead of writing plaintext into it.
 */
export const REPOSITORY_FORMAT = 'blockrep-repository';
export const REPOSITORY_FORMAT_VERSION = 1;
export const ENCRYPTED_FORMAT_VERSION = 2;
/** The newest format version this blockrep reads. */
export const NEWEST_FORMAT_VERSION = ENCRYPTED_FORMAT_VERSION;
export const CONFIG_KEY = 'blockrep.json';
/** Where the key files of an encrypted repository are (`keys/<16 hex>`). */
export const KEYS_PREFIX = 'keys/';

export const encryptionConfigSchema = z
  .object({
    /** Chunks and manifests: AES-256-GCM under per-object keys (crypto/object-seal.ts). */
    cipher: z.literal('aes-256-gcm'),
    /** Chunk ids: HMAC-SHA-256 of the plaintext under a key derived from the master key. */
    chunkIds: z.literal('hmac-sha256'),
    /** Passphrases: scrypt, parameters in each key file. */
    kdf: z.literal('scrypt'),
  })
  .strict();

export const repositoryConfigSchema = z
  .object({
    format: z.literal(REPOSITORY_FORMAT),
    version: z.number().int().positive(),
    id: z.string().regex(/^[0-9a-f]{32}$/),
    createdAt: z.string(),
    encryption: encryptionConfigSchema.optional(),
  })
  .strict()
  .refine((c) => (c.version === ENCRYPTED_FORMAT_VERSION) === (c.encryption !== undefined), 'format version 2 and "encryption" go together');

export type RepositoryConfig = z.infer<typeof repositoryConfigSchema>;

export const ENCRYPTION: z.infer<typeof encryptionConfigSchema> = { cipher: 'aes-256-gcm', chunkIds: 'hmac-sha256', kdf: 'scrypt' };
