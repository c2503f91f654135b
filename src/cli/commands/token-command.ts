import type { Command } from 'commander';
import { createToken, diskPrefixSchema, listTokens, revokeToken, rightSchema, tokenNameSchema, type Right } from '../../tokens/index.js';
import { BlockrepError } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';

export function registerToken(program: Command): void {
  const token = program
    .command('token')
    .description('manage the access tokens of `blockrep serve` (stored hashed; a secret is shown once)');

  token
    .command('create')
    .description('make a token; its secret is printed once, as the last line of stdout')
    .requiredOption('--tokens <file>', 'tokens file of blockrep serve (created if missing, mode 0600)')
    .requiredOption('--name <name>', 'a name for the token (letters, digits, ".", "_", "-")')
    .requiredOption('--disks <prefixes>', 'comma-separated disk id prefixes it covers ("vm1" covers vm1 and vm1/vda; "*" every disk)')
    .requiredOption('--rights <rights>', 'comma-separated: read, write, admin (admin: delete versions, and with "*" chunks)')
    .option('--json', 'print one JSON object (the secret in "secret")')
    .action(async (opts: { tokens: string; name: string; disks: string; rights: string; json?: boolean }) => {
      await runCommand(Boolean(opts.json), async () => {
        const name = checked(tokenNameSchema, opts.name, '--name');
        const disks = splitList(opts.disks).map((d) => checked(diskPrefixSchema, d, '--disks'));
        const rights = splitList(opts.rights).map((r) => checked(rightSchema, r, '--rights (read, write, admin)')) as Right[];
        if (disks.length === 0 || rights.length === 0) throw new BlockrepError('USAGE', '--disks and --rights need at least one value each');
        const made = await createToken(opts.tokens, { name, disks, rights });
        return {
          exitCode: EXIT_OK,
          json: { ok: true, token: made.token, secret: made.secret },
          text: [
            `created token ${made.token.name}: ${made.token.rights.join(',')} on disks ${made.token.disks.join(',')}`,
            'give the secret below to its client (BLOCKREP_TOKEN or --token-file); it is not stored and not shown again:',
            made.secret,
          ].join('\n'),
        };
      });
    });

  token
    .command('list')
    .description('list the tokens (names, disks, rights; never secrets)')
    .requiredOption('--tokens <file>', 'tokens file of blockrep serve')
    .option('--json', 'print one JSON object')
    .action(async (opts: { tokens: string; json?: boolean }) => {
      await runCommand(Boolean(opts.json), async () => {
        const tokens = await listTokens(opts.tokens);
        const text =
          tokens.length === 0
            ? 'no tokens'
            : tokens.map((t) => `${t.name.padEnd(24)} ${t.rights.join(',').padEnd(16)} ${t.disks.join(',').padEnd(24)} ${t.created}`).join('\n');
        return { exitCode: EXIT_OK, json: { ok: true, tokens }, text };
      });
    });

  token
    .command('revoke')
    .description('remove a token; a running server refuses it from its next request')
    .requiredOption('--tokens <file>', 'tokens file of blockrep serve')
    .argument('<name>', 'the token to remove')
    .option('--json', 'print one JSON object')
    .action(async (name: string, opts: { tokens: string; json?: boolean }) => {
      await runCommand(Boolean(opts.json), async () => {
        await revokeToken(opts.tokens, name);
        return { exitCode: EXIT_OK, json: { ok: true, revoked: name }, text: `revoked token ${name}` };
      });
    });
}

function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function checked<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: { issues: Array<{ message: string }> } } }, value: string, option: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new BlockrepError('USAGE', `${option}: ${JSON.stringify(value)}: ${r.error.issues[0]?.message ?? 'invalid'}`);
  return r.data;
}
