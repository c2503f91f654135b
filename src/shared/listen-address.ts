import { isIP } from 'node:net';
import { BlockrepError } from './blockrep-error.js';

export const DEFAULT_LISTEN = '127.0.0.1:8417';

export interface ListenAddress {
  host: string;
  port: number;
}

/** "HOST:PORT", "[v6 address]:PORT" (port 0: any free port). */
export function parseListenAddress(text: string): ListenAddress {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new BlockrepError('USAGE', `--listen must be HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:8417, not ${JSON.stringify(text)}`);
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && isIP(host) !== 6) throw new BlockrepError('USAGE', `--listen: ${host} is not an IPv6 address`);
  return { host, port };
}

/** Loopback only: 127.0.0.0/8, ::1, localhost. Anything else is reachable from the network. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

export function urlFor(scheme: 'http' | 'https', host: string, port: number): string {
  return `${scheme}://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}
