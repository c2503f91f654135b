import { BlockrepError } from '../shared/index.js';

/**
 * Asks for a passphrase on the terminal, without echo: the one interactive input blockrep
 * has. Only when stdin and stderr are terminals; elsewhere the caller says how else to give it.
 */
export function canPrompt(): boolean {
  return Boolean(process.stdin.isTTY && process.stderr.isTTY);
}

export async function promptPassphrase(question: string): Promise<string> {
  const stdin = process.stdin;
  if (!canPrompt()) throw new BlockrepError('INTERNAL', 'no terminal to ask on');
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.setEncoding('utf8');
  try {
    return await new Promise<string>((resolve, reject) => {
      let typed = '';
      const onData = (text: string): void => {
        for (const ch of text) {
          if (ch === '\r' || ch === '\n' || ch === '\u0004') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            resolve(typed);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            reject(new BlockrepError('INTERRUPTED', 'interrupted at the passphrase prompt'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1);
          else typed += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
  }
}
