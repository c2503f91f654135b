import { BlockrepError, readSmallFile, systemErrorCode, wrapSystemError } from '../../shared/index.js';
import { TOKEN_PATTERN, readTokenFile } from '../../protocol/index.js';

/**
 * The access token for a repository server: from --token-file (a file holding the secret) or
 * the BLOCKREP_TOKEN environment variable — never a command-line value, which other users can
 * read in the process list.
 */
export async function loadAccessToken(options: { tokenFile?: string; env?: NodeJS.ProcessEnv }): Promise<string | undefined> {
  if (options.tokenFile !== undefined) {
    const read = await readTokenFile(options.tokenFile, `--token-file ${options.tokenFile}`);
    if ('problem' in read) throw new BlockrepError('USAGE', read.problem);
    return read.token;
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

/** A CA bundle is a few certificates; a cap keeps a wrong path (/dev/zero) from filling memory. */
const MAX_CA_FILE_BYTES = 1024 * 1024;

export async function readCaFile(path: string): Promise<Buffer> {
  try {
    const pem = await readSmallFile(path, MAX_CA_FILE_BYTES);
    if (!pem.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) throw new BlockrepError('USAGE', `--cacert ${path} is not a PEM certificate`);
    return pem;
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') throw new BlockrepError('USAGE', `--cacert ${path} does not exist`);
    if (systemErrorCode(err) === 'EFBIG') throw new BlockrepError('USAGE', `--cacert ${path} is larger than ${MAX_CA_FILE_BYTES} bytes: it is not a PEM certificate`);
    throw wrapSystemError(err, `reading --cacert ${path}`);
  }
}
