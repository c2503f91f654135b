import type { Command } from 'commander';
import { writeFile } from 'node:fs/promises';
import { exportMasterKey, importMasterKey } from '../../crypto/index.js';
import { addKeyFile, defaultKeyLabel, listKeyFiles, openRepository, removeKeyFile, unlockWithMasterKey, unlockWithPassphrase, type Repository } from '../../repository/index.js';
import { BlockrepError, readSmallFile, wrapSystemError } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { addRepositoryOptions, newPassphrase, passphraseSource, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';

interface KeyOptions extends RepositoryCliOptions {
  newPasswordFile?: string;
  label?: string;
  fromExport?: string;
  force?: boolean;
  out?: string;
  json?: boolean;
}

/** An encrypted repository, opened locked: each subcommand unlocks it as it needs. */
async function openEncrypted(opts: KeyOptions): Promise<Repository> {
  const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts, { withoutKey: true }));
  if (!repo.encrypted) {
    await repo.backend.close();
    throw new BlockrepError('USAGE', `${repo.location} is not encrypted: it has no keys (blockrep init --encrypt makes an encrypted repository)`);
  }
  return repo;
}

async function unlock(repo: Repository, opts: KeyOptions): Promise<string> {
  return unlockWithPassphrase(repo, await passphraseSource(opts, `passphrase for ${opts.repo}: `)());
}

function keyCommand(parent: Command, name: string): Command {
  return addRepositoryOptions(parent.command(name)).option('--json', 'print one JSON object');
}

export function registerKey(program: Command): void {
  const key = program.command('key').description('manage the passphrases (key files) of an encrypted repository, and export its master key');

  keyCommand(key, 'list')
    .description('list the key files: id, label, when added, scrypt cost (no passphrase needed)')
    .action(async (opts: KeyOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const repo = await openEncrypted(opts);
        try {
          const keys = (await listKeyFiles(repo)).map((f) => ({ id: f.id, label: f.label, createdAt: f.createdAt, kdf: { name: f.kdf.name, N: f.kdf.N, r: f.kdf.r, p: f.kdf.p } }));
          const text = keys.length === 0 ? 'no keys: only the exported master key opens this repository (blockrep key add --from-export FILE)' : keys.map((k) => `${k.id}  ${k.createdAt}  ${k.label}  scrypt N=2^${Math.log2(k.kdf.N)} r=${k.kdf.r}`).join('\n');
          return { exitCode: EXIT_OK, json: { ok: true, keys }, text };
        } finally {
          await repo.backend.close();
        }
      });
    });

  keyCommand(key, 'add')
    .description('add a passphrase: unlocked with an existing one (or --from-export), the new one from --new-password-file, $BLOCKREP_NEW_PASSWORD or the terminal')
    .option('--new-password-file <file>', 'file whose first line is the new passphrase')
    .option('--from-export <file>', 'unlock with the master key exported by `blockrep key export` instead of a passphrase (when every passphrase is lost)')
    .option('--label <text>', 'a label for the new key (default: user@host)')
    .action(async (opts: KeyOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const repo = await openEncrypted(opts);
        try {
          if (opts.fromExport !== undefined) {
            let text: string;
            try {
              text = (await readSmallFile(opts.fromExport, 4096)).toString('utf8');
            } catch (err) {
              throw wrapSystemError(err, `reading the master key export ${opts.fromExport}`);
            }
            await unlockWithMasterKey(repo, importMasterKey(text, repo.config.id));
          } else {
            await unlock(repo, opts);
          }
          const file = await addKeyFile(repo, await newPassphrase(opts), opts.label ?? defaultKeyLabel());
          return { exitCode: EXIT_OK, json: { ok: true, key: file.id }, text: `added key ${file.id} (${file.label})` };
        } finally {
          await repo.backend.close();
        }
      });
    });

  keyCommand(key, 'passwd')
    .description('change a passphrase: its key file is replaced by one for the new passphrase')
    .option('--new-password-file <file>', 'file whose first line is the new passphrase')
    .option('--label <text>', 'a label for the new key (default: the old one)')
    .action(async (opts: KeyOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const repo = await openEncrypted(opts);
        try {
          const old = await unlock(repo, opts);
          const label = opts.label ?? (await listKeyFiles(repo)).find((f) => f.id === old)?.label ?? defaultKeyLabel();
          // The new key first: a failure in between leaves both passphrases working, never none.
          const file = await addKeyFile(repo, await newPassphrase(opts), label);
          await removeKeyFile(repo, old);
          return { exitCode: EXIT_OK, json: { ok: true, key: file.id, removed: old }, text: `key ${old} replaced by key ${file.id}` };
        } finally {
          await repo.backend.close();
        }
      });
    });

  keyCommand(key, 'remove')
    .description('remove a key file (unlocked with any passphrase); the last one only with --force')
    .argument('<id>', 'the key to remove (see blockrep key list)')
    .option('--force', 'also remove the last key: afterwards only the exported master key opens the repository')
    .action(async (id: string, opts: KeyOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const repo = await openEncrypted(opts);
        try {
          await unlock(repo, opts);
          await removeKeyFile(repo, id, { allowLast: Boolean(opts.force) });
          return { exitCode: EXIT_OK, json: { ok: true, removed: id }, text: `removed key ${id}` };
        } finally {
          await repo.backend.close();
        }
      });
    });

  keyCommand(key, 'export')
    .description('print (or write with --out) the master key, for a copy kept offline: with it, `key add --from-export` opens the repository when every passphrase is lost')
    .option('--out <file>', 'write it to this new file (mode 0600) instead of stdout')
    .action(async (opts: KeyOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const repo = await openEncrypted(opts);
        try {
          await unlock(repo, opts);
          const text = exportMasterKey(repo.unlockedMasterKey(), repo.config.id);
          if (opts.out !== undefined) {
            try {
              await writeFile(opts.out, text, { mode: 0o600, flag: 'wx' });
            } catch (err) {
              throw wrapSystemError(err, `writing the master key to ${opts.out}`);
            }
            return { exitCode: EXIT_OK, json: { ok: true, out: opts.out }, text: `master key written to ${opts.out}: keep it offline, it opens every backup in the repository` };
          }
          return { exitCode: EXIT_OK, json: { ok: true, export: JSON.parse(text) as unknown }, text: text.trimEnd() };
        } finally {
          await repo.backend.close();
        }
      });
    });
}
