import type { Command } from 'commander';
import type { OpenRepositoryOptions } from '../repository/index.js';
import { BlockrepError, parseSize, parseSyncLevel, readSmallFile, wrapSystemError } from '../shared/index.js';
import { canPrompt, promptPassphrase } from './passphrase-prompt.js';

/** The options every command that reaches a repository takes, in one place. */
export interface RepositoryCliOptions {
  repo: string;
  tokenFile?: string;
  cacert?: string;
  bwlimit?: string;
  s3Endpoint?: string;
  passwordFile?: string;
  /** `backup --sync-level` (the command that stores chunks): for a directory only. */
  syncLevel?: string;
}

const MAX_PASSPHRASE_FILE_BYTES = 4096;

export function addRepositoryOptions(cmd: Command, repoHelp = 'repository: a directory, http(s)://HOST:PORT of a blockrep serve, or s3://BUCKET[/PREFIX]'): Command {
  return cmd
    .requiredOption('--repo <repo>', repoHelp)
    .option('--token-file <file>', 'http(s) repository: file holding the access token (default: $BLOCKREP_TOKEN)')
    .option('--cacert <file>', 'https repository: CA certificate (PEM) to trust')
    .option('--s3-endpoint <url>', 's3 repository: the S3 server, for a service other than AWS (default: $AWS_ENDPOINT_URL); credentials and region come from the AWS chain')
    .option('--bwlimit <rate>', 'limit the bytes sent to and read from the repository, per second (e.g. 20M)')
    .option('--password-file <file>', 'encrypted repository: file whose first line is the passphrase (default: $BLOCKREP_PASSWORD, else asked on the terminal)');
}

/** A passphrase file's first line (without its line end). */
async function passphraseFromFile(path: string, option: string): Promise<string> {
  let raw: Buffer;
  try {
    raw = await readSmallFile(path, MAX_PASSPHRASE_FILE_BYTES);
  } catch (err) {
    throw wrapSystemError(err, `reading the passphrase file ${path} (${option})`);
  }
  const line = raw.toString('utf8').split(/\r?\n/, 1)[0] ?? '';
  if (line === '') throw new BlockrepError('USAGE', `${option} ${path}: its first line is empty`);
  return line;
}

/**
 * Where an encrypted repository's passphrase comes from, the same way for every command:
 * `--password-file FILE`, else $BLOCKREP_PASSWORD, else a prompt on the terminal; with none of
 * them, KEY_REQUIRED. Never a command-line argument (other users see those). Asked only when
 * the repository turns out to be encrypted.
 */
export function passphraseSource(opts: { passwordFile?: string | undefined }, question = 'passphrase: '): () => Promise<string> {
  return async () => {
    if (opts.passwordFile !== undefined) return passphraseFromFile(opts.passwordFile, '--password-file');
    const env = process.env.BLOCKREP_PASSWORD;
    if (env !== undefined && env !== '') return env;
    if (canPrompt()) return promptPassphrase(question);
    throw new BlockrepError('KEY_REQUIRED', 'the repository is encrypted: give its passphrase with BLOCKREP_PASSWORD, --password-file FILE, or run on a terminal');
  };
}

/**
 * A new passphrase (init, key add, key passwd): `--new-password-file FILE`, else
 * $BLOCKREP_NEW_PASSWORD, else asked twice on the terminal. For init, whose repository has no
 * passphrase yet, --password-file and $BLOCKREP_PASSWORD also serve.
 */
export async function newPassphrase(opts: { newPasswordFile?: string | undefined; passwordFile?: string | undefined }, options: { initial?: boolean } = {}): Promise<string> {
  if (opts.newPasswordFile !== undefined) return passphraseFromFile(opts.newPasswordFile, '--new-password-file');
  const env = process.env.BLOCKREP_NEW_PASSWORD;
  if (env !== undefined && env !== '') return env;
  if (options.initial) {
    if (opts.passwordFile !== undefined) return passphraseFromFile(opts.passwordFile, '--password-file');
    const current = process.env.BLOCKREP_PASSWORD;
    if (current !== undefined && current !== '') return current;
  }
  if (!canPrompt()) {
    throw new BlockrepError('KEY_REQUIRED', `no new passphrase given: use --new-password-file FILE or BLOCKREP_NEW_PASSWORD${options.initial ? ' (or --password-file FILE, BLOCKREP_PASSWORD)' : ''}, or run on a terminal`);
  }
  const first = await promptPassphrase('new passphrase: ');
  if (first === '') throw new BlockrepError('USAGE', 'an empty passphrase protects nothing; choose one');
  if ((await promptPassphrase('the same again: ')) !== first) throw new BlockrepError('USAGE', 'the two passphrases differ; nothing changed');
  return first;
}

/** The options to open the repository with; an encrypted one is unlocked with passphraseSource unless `withoutKey`. */
export function repositoryOptionsFrom(opts: RepositoryCliOptions, extra: { create?: boolean; withoutKey?: boolean } = {}): OpenRepositoryOptions {
  const { withoutKey, ...rest } = extra;
  let bwlimit: number | undefined;
  if (opts.bwlimit !== undefined) {
    bwlimit = parseSize(opts.bwlimit, '--bwlimit rate');
    if (bwlimit < 1024) throw new BlockrepError('USAGE', `--bwlimit ${opts.bwlimit} is below 1K bytes per second`);
  }
  const syncLevel = opts.syncLevel === undefined ? undefined : parseSyncLevel(opts.syncLevel);
  return {
    ...rest,
    ...(withoutKey ? {} : { passphrase: passphraseSource(opts, `passphrase for ${opts.repo}: `) }),
    ...(syncLevel !== undefined ? { syncLevel } : {}),
    ...(opts.tokenFile !== undefined ? { tokenFile: opts.tokenFile } : {}),
    ...(opts.cacert !== undefined ? { cacert: opts.cacert } : {}),
    ...(opts.s3Endpoint !== undefined ? { s3Endpoint: opts.s3Endpoint } : {}),
    ...(bwlimit !== undefined ? { bwlimit } : {}),
  };
}
