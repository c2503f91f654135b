import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';
import { masterKeyCheck } from './key-file.js';
import { MASTER_KEY_BYTES } from './repository-keys.js';

/**
 * `blockrep key export`: the master key itself, for a paper or offline copy — the only way back
 * into an encrypted repository once every passphrase is lost. Short enough to type back in.
 */
export const MASTER_KEY_EXPORT_FORMAT = 'blockrep-master-key';

export const masterKeyExportSchema = z
  .object({
    format: z.literal(MASTER_KEY_EXPORT_FORMAT),
    version: z.literal(1),
    repository: z.string().regex(/^[0-9a-f]{32}$/),
    masterKey: z.string().regex(/^[0-9a-f]{64}$/),
    check: z.string().regex(/^[0-9a-f]{16}$/),
  })
  .strict();

export type MasterKeyExport = z.infer<typeof masterKeyExportSchema>;

export function exportMasterKey(masterKey: Uint8Array, repository: string): string {
  const body: MasterKeyExport = { format: MASTER_KEY_EXPORT_FORMAT, version: 1, repository, masterKey: Buffer.from(masterKey).toString('hex'), check: masterKeyCheck(masterKey) };
  return `${JSON.stringify(body, null, 2)}\n`;
}

/** The master key in an export, checked for form and against its check value. */
export function importMasterKey(text: string, repository: string): Uint8Array {
  let parsed: MasterKeyExport;
  try {
    parsed = masterKeyExportSchema.parse(JSON.parse(text));
  } catch (err) {
    throw new BlockrepError('USAGE', 'not a blockrep master key export (as `blockrep key export` writes it)', { cause: err });
  }
  const key = new Uint8Array(Buffer.from(parsed.masterKey, 'hex'));
  if (key.byteLength !== MASTER_KEY_BYTES || masterKeyCheck(key) !== parsed.check) throw new BlockrepError('USAGE', 'the master key export is damaged: its check value does not match (a typo?)');
  if (parsed.repository !== repository) throw new BlockrepError('WRONG_PASSWORD', `the master key export is for repository ${parsed.repository}, not this one (${repository})`);
  return key;
}
