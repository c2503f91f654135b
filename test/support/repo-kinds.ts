import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { onTestFinished } from 'vitest';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer } from './blockrep-server.js';

/**
 * Where a CLI test's repository lives: a local directory, or the same directory served by a
 * real `blockrep serve` on loopback (with a token, given by --token-file). Tests take
 * `args` (["--repo", …] and the options that go with it), `env`, and `root` (the directory,
 * to look at or damage what is stored), and run unchanged against both.
 * BLOCKREP_TEST_REPO_KINDS=local or =http runs one kind only.
 */
export interface TestRepo {
  /** The directory that holds the repository's files. */
  root: string;
  /** The --repo argument. */
  location: string;
  /** --repo and, for a server, --token-file. */
  args: string[];
  env: Record<string, string>;
  close(): Promise<void>;
}

export interface RepoKind {
  name: 'local' | 'http';
  open(root: string): Promise<TestRepo>;
}

const local: RepoKind = {
  name: 'local',
  open: async (root) => ({ root, location: root, args: ['--repo', root], env: {}, close: async () => undefined }),
};

const http: RepoKind = {
  name: 'http',
  open: async (root) => {
    const stem = join(dirname(root), `.${root.split('/').pop()}`);
    const tokensFile = `${stem}-tokens.json`;
    const tokenFile = `${stem}-token`;
    const { secret } = await createToken(tokensFile, { name: 'cli-test', disks: ['*'], rights: ['read', 'write'] });
    await writeFile(tokenFile, `${secret}\n`, { mode: 0o600 });
    const server = await startServer({ root, tokensFile });
    return {
      root,
      location: server.url,
      args: ['--repo', server.url, '--token-file', tokenFile],
      // The client's manifest cache stays with the test, not in ~/.cache.
      env: { BLOCKREP_CACHE_DIR: `${stem}-cache` },
      close: () => server.stop(),
    };
  },
};

const selected = (process.env.BLOCKREP_TEST_REPO_KINDS ?? 'local,http').split(',');
export const repoKinds: RepoKind[] = [local, http].filter((k) => selected.includes(k.name));

/** A repository of `kind` at `root` for the running test, closed (server stopped) when it ends. */
export async function openTestRepo(kind: RepoKind, root: string): Promise<TestRepo> {
  const repo = await kind.open(root);
  onTestFinished(() => repo.close());
  return repo;
}
