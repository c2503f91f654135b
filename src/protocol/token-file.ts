import { readSmallFile, systemErrorCode } from '../shared/index.js';
import { TOKEN_PATTERN } from './http-protocol.js';

/** A token file holds one token and a newline; anything much larger is not a token file. */
export const MAX_TOKEN_FILE_BYTES = 4096;

/**
 * Reads an access token file: the one reading shared by `--token-file` and a job config's
 * `tokenFile`, so both say the same about the same file. The answer is the token, or a sentence
 * saying why the file cannot be used, naming it as `label`.
 */
export async function readTokenFile(path: string, label = path): Promise<{ token: string } | { problem: string }> {
  let text: string;
  try {
    text = (await readSmallFile(path, MAX_TOKEN_FILE_BYTES)).toString('utf8');
  } catch (err) {
    const sys = systemErrorCode(err);
    const why =
      sys === 'ENOENT' ? 'it does not exist'
      : sys === 'EACCES' || sys === 'EPERM' ? 'permission denied — make the token file readable by the user blockrep runs as (mode 0600, owned by it)'
      : sys === 'EISDIR' ? 'it is a folder'
      : sys === 'EFBIG' ? `it is larger than ${MAX_TOKEN_FILE_BYTES} bytes, so it is not a token file`
      : err instanceof Error ? err.message : String(err);
    return { problem: `cannot read ${label}: ${why}` };
  }
  if (!TOKEN_PATTERN.test(text.trim())) return { problem: `${label} does not hold a blockrep access token (brt_… as printed by \`blockrep token create\`)` };
  return { token: text.trim() };
}
