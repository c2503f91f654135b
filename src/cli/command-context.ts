import type { Progress } from '../app/index.js';
import { BlockrepError, toBlockrepError } from '../shared/index.js';
import { EXIT_OK, exitCodeFor } from './exit-codes.js';
import { ProgressDisplay } from './output/progress-display.js';

/** What a command hands back: the exit code and its result in both output forms. */
export interface CommandResult {
  exitCode: number;
  json: Record<string, unknown>;
  text: string;
}

export interface CommandContext {
  json: boolean;
  signal: AbortSignal;
  onProgress: ((p: Progress) => void) | undefined;
}

let exitCode = EXIT_OK;
export function finalExitCode(): number {
  return exitCode;
}

/**
 * Runs a command's handler with the cross-cutting parts every command shares: an abort signal
 * wired to SIGINT/SIGTERM, a progress display on terminals, and the one place where results
 * and errors are printed. Handlers never print and never exit.
 */
export async function runCommand(json: boolean, handler: (ctx: CommandContext) => Promise<CommandResult>): Promise<void> {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      // Never exit in the middle of the clean-up a first signal started: it may be thawing a
      // guest or committing overlays back. A process that truly hangs can be killed and
      // `blockrep recover` puts the VM right.
      process.stderr.write(`blockrep: ${signal} again: still cleaning up; wait, or kill -9 and run blockrep recover\n`);
      return;
    }
    controller.abort(new BlockrepError('INTERRUPTED', `interrupted by ${signal}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const display = !json && process.stdout.isTTY && process.stderr.isTTY ? new ProgressDisplay() : undefined;
  try {
    const result = await handler({ json, signal: controller.signal, onProgress: display ? (p) => display.update(p) : undefined });
    display?.clear();
    process.stdout.write(`${json ? JSON.stringify(result.json) : result.text}\n`);
    exitCode = result.exitCode;
  } catch (err) {
    display?.clear();
    exitCode = printError(err, json, controller.signal.aborted);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export function printError(err: unknown, json: boolean, interrupted = false): number {
  const e = toBlockrepError(err, interrupted);
  if (json) {
    process.stdout.write(`${JSON.stringify({ ok: false, code: e.code, message: e.message, ...(e.details ? { details: e.details } : {}) })}\n`);
  } else {
    process.stderr.write(`blockrep: error: ${e.message}\n`);
  }
  if (process.env.BLOCKREP_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
  return exitCodeFor(e.code);
}
