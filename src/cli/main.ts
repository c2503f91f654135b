import { Command, CommanderError } from 'commander';
import { createRequire } from 'node:module';
import { BlockrepError } from '../shared/index.js';
import { registerBackup } from './commands/backup-command.js';
import { registerGc } from './commands/gc-command.js';
import { registerInit } from './commands/init-command.js';
import { registerKey } from './commands/key-command.js';
import { registerList } from './commands/list-command.js';
import { registerPrune } from './commands/prune-command.js';
import { registerRecover } from './commands/recover-command.js';
import { registerRestore } from './commands/restore-command.js';
import { registerRun } from './commands/run-command.js';
import { registerServe } from './commands/serve-command.js';
import { registerToken } from './commands/token-command.js';
import { registerVerify } from './commands/verify-command.js';
import { finalExitCode, printError } from './command-context.js';
import { EXIT_USAGE, exitCodeHelp } from './exit-codes.js';

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

function buildProgram(): Command {
  const program = new Command('blockrep')
    .description('Replicates QEMU/KVM virtual machine disks to a repository, sending only the blocks that changed.')
    .version(version, '-V, --version', 'print the blockrep version')
    .enablePositionalOptions()
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .addHelpText('after', exitCodeHelp);
  registerInit(program);
  registerBackup(program);
  registerRestore(program);
  registerVerify(program);
  registerList(program);
  registerPrune(program);
  registerGc(program);
  registerRecover(program);
  registerRun(program);
  registerServe(program);
  registerToken(program);
  registerKey(program);
  for (const cmd of program.commands) cmd.exitOverride().addHelpText('after', exitCodeHelp);
  return program;
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are successes; everything else commander rejects is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      if (argv.includes('--json')) printError(new BlockrepError('USAGE', err.message.replace(/^error: /, '')), true);
      return EXIT_USAGE;
    }
    return printError(err, argv.includes('--json'));
  }
  return finalExitCode();
}

// The only process.exit in blockrep: after output is flushed.
main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.exitCode = printError(err, process.argv.includes('--json'));
  },
);
