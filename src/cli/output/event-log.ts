import type { RunEvent } from '../../jobs/index.js';

/**
 * The event log of `blockrep run`: one line per event on stderr, as text for people (and the
 * journal) or as JSON for log shippers. The access token is never in an event; as a second
 * guard, anything shaped like a token is masked before a line is written.
 */

export type LogFormat = 'text' | 'json';

export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

const TOKEN_LIKE = /brt_[A-Za-z0-9_-]{16,}/g;

export function maskSecrets(line: string): string {
  return line.replace(TOKEN_LIKE, 'brt_[redacted]');
}

export function formatEvent(e: RunEvent, format: LogFormat): string {
  const time = new Date(e.at).toISOString();
  if (format === 'json') {
    return maskSecrets(
      JSON.stringify({
        time,
        level: e.level,
        event: e.event,
        ...(e.vm !== undefined ? { vm: e.vm } : {}),
        ...(e.disk !== undefined ? { disk: e.disk } : {}),
        ...(e.code !== undefined ? { code: e.code } : {}),
        message: e.message,
        ...(e.data !== undefined ? { data: e.data } : {}),
      }),
    );
  }
  // One line even when a message has several (a config error, a commit failure).
  const message = e.message.replace(/\s*\n\s*/g, ' | ');
  return maskSecrets(`${time} ${e.level.padEnd(5)} ${e.event}${e.code !== undefined ? ` [${e.code}]` : ''} ${message}`);
}

export function eventLogger(format: LogFormat, write: (line: string) => void = (line) => process.stderr.write(line)): (e: RunEvent) => void {
  return (e) => write(`${formatEvent(e, format)}\n`);
}
