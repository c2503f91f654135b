import { z } from 'zod';

/** The repository's own description, stored as `blockrep.json` at its root. */
export const REPOSITORY_FORMAT = 'blockrep-repository';
export const REPOSITORY_FORMAT_VERSION = 1;
export const CONFIG_KEY = 'blockrep.json';

export const repositoryConfigSchema = z
  .object({
    format: z.literal(REPOSITORY_FORMAT),
    version: z.number().int().positive(),
    id: z.string().regex(/^[0-9a-f]{32}$/),
    createdAt: z.string(),
  })
  .strict();

export type RepositoryConfig = z.infer<typeof repositoryConfigSchema>;
