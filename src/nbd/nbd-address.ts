import { BlockrepError } from '../shared/index.js';

/**
 * Where an NBD server listens: a unix socket (QEMU's nbd-server-start, libvirt's pull-mode
 * backup) or a TCP host and port. parseNbdAddress() reads the forms a user or a config gives:
 * `unix:PATH`, an absolute path, `HOST:PORT`, `[IPV6]:PORT`, and the NBD URI forms
 * `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`.
 */
export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** The IANA port of NBD, the default of nbd:// URIs. */
export const NBD_DEFAULT_PORT = 10809;

export interface ParsedNbdAddress {
  address: NbdAddress;
  /** Only URIs carry an export name. */
  exportName?: string;
}

function usage(text: string, why: string): BlockrepError {
  return new BlockrepError('USAGE', `not an NBD address: ${JSON.stringify(text)} (${why}); use unix:PATH, HOST:PORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH`);
}

function parsePort(text: string, raw: string): number {
  if (!/^\d{1,5}$/.test(raw)) throw usage(text, 'the port is not a number');
  const port = Number(raw);
  if (port < 1 || port > 65535) throw usage(text, 'the port is out of range');
  return port;
}

export function parseNbdAddress(text: string): ParsedNbdAddress {
  if (text.length === 0) throw usage(text, 'empty');
  if (text.startsWith('nbd://') || text.startsWith('nbd+unix://')) return parseNbdUri(text);
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path.length === 0) throw usage(text, 'no socket path');
    return { address: { kind: 'unix', path } };
  }
  if (text.startsWith('/')) return { address: { kind: 'unix', path: text } };
  const v6 = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(text);
  if (v6) return { address: { kind: 'tcp', host: v6[1]!, port: parsePort(text, v6[2]!) } };
  const colon = text.lastIndexOf(':');
  if (colon <= 0 || text.indexOf(':') !== colon) throw usage(text, 'expected HOST:PORT');
  return { address: { kind: 'tcp', host: text.slice(0, colon), port: parsePort(text, text.slice(colon + 1)) } };
}

function parseNbdUri(text: string): ParsedNbdAddress {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw usage(text, 'a malformed URI');
  }
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:') {
    if (url.host !== '') throw usage(text, 'nbd+unix URIs have no host');
    const path = url.searchParams.get('socket');
    if (path === null || path.length === 0) throw usage(text, 'no ?socket=PATH');
    return { address: { kind: 'unix', path }, exportName };
  }
  if (url.hostname === '') throw usage(text, 'no host');
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { address: { kind: 'tcp', host, port: url.port === '' ? NBD_DEFAULT_PORT : parsePort(text, url.port) }, exportName };
}

export function formatNbdAddress(address: NbdAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
