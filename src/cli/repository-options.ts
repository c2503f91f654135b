import type { Command } from 'commander';
import type { OpenRepositoryOptions } from '../repository/index.js';
import { BlockrepError, parseSize, parseSyncLevel } from '../shared/index.js';

/** The options every command that reaches a repository takes, in one place. */
export interface RepositoryCliOptions {
  repo: string;
  tokenFile?: string;
  cacert?: string;
  bwlimit?: string;
  s3Endpoint?: string;
  /** `backup --sync-level` (the command that stores chunks): for a directory only. */
  syncLevel?: string;
}

export function addRepositoryOptions(cmd: Command, repoHelp = 'repository: a directory, http(s)://HOST:PORT of a blockrep serve, or s3://BUCKET[/PREFIX]'): Command {
  return cmd
    .requiredOption('--repo <repo>', repoHelp)
    .option('--token-file <file>', 'http(s) repository: file holding the access token (default: $BLOCKREP_TOKEN)')
    .option('--cacert <file>', 'https repository: CA certificate (PEM) to trust')
    .option('--s3-endpoint <url>', 's3 repository: the S3 server, for a service other than AWS (default: $AWS_ENDPOINT_URL); credentials and region come from the AWS chain')
    .option('--bwlimit <rate>', 'limit the bytes sent to and read from the repository, per second (e.g. 20M)');
}

export function repositoryOptionsFrom(opts: RepositoryCliOptions, extra: { create?: boolean } = {}): OpenRepositoryOptions {
  let bwlimit: number | undefined;
  if (opts.bwlimit !== undefined) {
    bwlimit = parseSize(opts.bwlimit, '--bwlimit rate');
    if (bwlimit < 1024) throw new BlockrepError('USAGE', `--bwlimit ${opts.bwlimit} is below 1K bytes per second`);
  }
  const syncLevel = opts.syncLevel === undefined ? undefined : parseSyncLevel(opts.syncLevel);
  return {
    ...extra,
    ...(syncLevel !== undefined ? { syncLevel } : {}),
    ...(opts.tokenFile !== undefined ? { tokenFile: opts.tokenFile } : {}),
    ...(opts.cacert !== undefined ? { cacert: opts.cacert } : {}),
    ...(opts.s3Endpoint !== undefined ? { s3Endpoint: opts.s3Endpoint } : {}),
    ...(bwlimit !== undefined ? { bwlimit } : {}),
  };
}
