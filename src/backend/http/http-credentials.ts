import { readFile } from 'node:fs/promises';
import { BlockrepError, systemErrorCode, wrapSystemError } from '../../shared/index.js';
import { TOKEN_PATTERN } from '../../protocol/index.js';

/**
 * The access token for a repository server: from --token-file (a file holding the secret) or
 * the BLOCKREP_TOKEN environment variable — never a command-line value, which other users can
 * read in the process list.
 */
export async function loadAccessToken(options: { tokenFile?: string; env?: NodeJS.ProcessEnv }): Promise<string | undefined> {
  if (options.tokenFile !== undefined) {
    let text: string;
    try {
      text = await readFile(options.tokenFile, 'utf8');
    } catch (err) {
      if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('USAGE', `--token-file ${options.tokenFile} does not exist`);
      throw wrapSystemError(err, `reading --token-file ${options.tokenFile}`);
    }
    return checkToken(text.trim(), `--token-file ${options.tokenFile}`);
  }
  const fromEnv = (options.env ?? process.env).BLOCKREP_TOKEN;
  if (fromEnv !== undefined && fromEnv !== '') return checkToken(fromEnv.trim(), 'BLOCKREP_TOKEN');
  return undefined;
}

function checkToken(token: string, where: string): string {
  if (!TOKEN_PATTERN.test(token)) {
    throw new BlockrepError('USAGE', `${where} does not hold a blockrep access token (brt_… as printed by \`blockrep token create\`)`);
  }
  return token;
}

export async function readCaFile(path: string): Promise<Buffer> {
  try {
    const pem = await readFile(path);
    if (!pem.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) throw new BlockrepError('USAGE', `--cacert ${path} is not a PEM certificate`);
    return pem;
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('USAGE', `--cacert ${path} does not exist`);
    throw wrapSystemError(err, `reading --cacert ${path}`);
  }
}
