import type { Command } from 'commander';
import { defaultKeyLabel, initEncryptedRepository, openBackend, openRepository } from '../../repository/index.js';
import { systemClock } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';
import { addRepositoryOptions, newPassphrase, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';

interface InitOptions extends RepositoryCliOptions {
  encrypt?: boolean;
  newPasswordFile?: string;
  label?: string;
  json?: boolean;
}

export function registerInit(program: Command): void {
  addRepositoryOptions(program.command('init'))
    .description('create a repository (a first backup also creates a plain one); with --encrypt, an encrypted one')
    .option('--encrypt', 'encrypt everything stored: chunks and manifests sealed with AES-256-GCM, chunk ids keyed; the passphrase from --password-file, $BLOCKREP_PASSWORD or the terminal')
    .option('--new-password-file <file>', 'with --encrypt: the passphrase of the first key (same as --password-file here)')
    .option('--label <text>', 'with --encrypt: a label for the first key (default: user@host)')
    .option('--json', 'print one JSON object')
    .action(async (opts: InitOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        const base = repositoryOptionsFrom(opts, { withoutKey: true });
        if (!opts.encrypt) {
          const repo = await openRepository(opts.repo, { ...base, create: true });
          await repo.backend.close();
          return { exitCode: EXIT_OK, json: { ok: true, repository: repo.config.id, encrypted: repo.encrypted }, text: `repository ${repo.config.id} at ${repo.location} (${repo.encrypted ? 'encrypted' : 'not encrypted'})` };
        }
        const passphrase = await newPassphrase(opts, { initial: true });
        const backend = await openBackend(opts.repo, base);
        try {
          const { repo, keyId } = await initEncryptedRepository(backend, { passphrase, label: opts.label ?? defaultKeyLabel(), clock: systemClock });
          return {
            exitCode: EXIT_OK,
            json: { ok: true, repository: repo.config.id, encrypted: true, key: keyId },
            text: [
              `encrypted repository ${repo.config.id} at ${repo.location}, first key ${keyId}`,
              'keep a copy of the master key away from this host (blockrep key export): if every passphrase is lost, it is the only way back into these backups',
            ].join('\n'),
          };
        } finally {
          await backend.close();
        }
      });
    });
}
