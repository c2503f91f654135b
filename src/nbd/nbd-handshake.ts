import type { Socket } from 'node:net';
import { BlockrepError } from '../shared/index.js';
import {
  NBD_DEFAULT_MAX_PAYLOAD,
  NBD_DEFAULT_MIN_BLOCK,
  NBD_DEFAULT_PREFERRED_BLOCK,
  NBD_MAX_MIN_BLOCK,
  NBD_OPTION_REPLY_ERROR_BIT,
  nbdBytes,
  nbdClientFlag,
  nbdHandshakeFlag,
  nbdInfo,
  nbdOption,
  nbdOptionReply,
  nbdOptionReplyErrorName,
  nbdTransmissionFlag,
} from './nbd-constants.js';
import {
  MAX_OPTION_REPLY_BYTES,
  decodeExportNameReply,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerGreeting,
  encodeClientFlags,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
} from './nbd-handshake-wire.js';
import { decodeNbdMessage, nbdProtocolError } from './nbd-protocol-error.js';
import type { SocketReader } from './socket-reader.js';

/**
 * The client's side of the fixed-newstyle handshake, as a sequence of option exchanges:
 * greeting → client flags → NBD_OPT_STRUCTURED_REPLY → NBD_OPT_SET_META_CONTEXT → NBD_OPT_GO
 * (NBD_OPT_EXPORT_NAME when the server does not know GO). Every reply is checked: its magic,
 * that it answers the option just sent, its length bound, its payload. Timeouts are the
 * caller's (it destroys the socket, which fails the pending read).
 */

/** What the handshake learned about the export. */
export interface NbdExportInfo {
  exportName: string;
  exportBytes: number;
  transmissionFlags: number;
  readOnly: boolean;
  /** Requests' offsets and lengths are multiples of this (a power of two, at most 64 KiB). */
  minimumBlockBytes: number;
  preferredBlockBytes: number;
  /** The largest payload the server accepts in one request. */
  maximumPayloadBytes: number;
  /** False when the server refused NBD_OPT_STRUCTURED_REPLY: reads get simple replies, no block status. */
  structuredReplies: boolean;
}

export interface HandshakeResult {
  info: NbdExportInfo;
  /** Selected metadata contexts: name → the id the server gave it. */
  contexts: Map<string, number>;
}

/** At most this many replies to one option (contexts, infos): a server cannot make us hoard. */
const MAX_REPLIES_PER_OPTION = 4096;

interface OptionReply {
  type: number;
  payload: Buffer;
}

class OptionChannel {
  constructor(
    private readonly socket: Socket,
    readonly reader: SocketReader,
    /** Both sides set NO_ZEROES: the NBD_OPT_EXPORT_NAME reply has no 124 zero bytes. */
    readonly noZeroes: boolean,
  ) {}

  send(option: number, data?: Uint8Array): void {
    this.socket.write(encodeOption(option, data));
  }

  async reply(option: number): Promise<OptionReply> {
    const header = decodeOptionReplyHeader(await this.reader.read(nbdBytes.optionReplyHeader));
    if (header.option !== option) throw nbdProtocolError(`the server answered option ${header.option} while option ${option} was asked`);
    if (header.length > MAX_OPTION_REPLY_BYTES) throw nbdProtocolError(`an option reply of ${header.length} bytes is over the ${MAX_OPTION_REPLY_BYTES}-byte bound`);
    return { type: header.type, payload: await this.reader.read(header.length) };
  }
}

function isError(type: number): boolean {
  return (type & NBD_OPTION_REPLY_ERROR_BIT) !== 0;
}

function optionRefused(what: string, reply: OptionReply, details: Record<string, unknown> = {}): BlockrepError {
  const message = decodeNbdMessage(reply.payload);
  const name = nbdOptionReplyErrorName(reply.type);
  return new BlockrepError('NBD_ERROR', `the NBD server refused ${what}: ${name}${message ? ` (${message})` : ''}`, { details: { ...details, reply: name } });
}

/** How far a handshake got, for the message of a timeout. */
export interface HandshakeProgress {
  greeted: boolean;
}

export async function clientHandshake(
  socket: Socket,
  reader: SocketReader,
  progress: HandshakeProgress,
  options: { exportName: string; structuredReplies: boolean; metaContexts: readonly string[] },
): Promise<HandshakeResult> {
  const channel = await greet(socket, reader, progress);
  const structuredReplies = options.structuredReplies && (await negotiateStructuredReplies(channel));
  const contexts = new Map<string, number>();
  if (options.metaContexts.length > 0) {
    if (!structuredReplies) {
      throw new BlockrepError('NBD_ERROR', 'the NBD server refused structured replies, without which it cannot answer block-status queries', { details: { option: 'NBD_OPT_STRUCTURED_REPLY' } });
    }
    for (const [name, id] of await metaContexts(channel, nbdOption.setMetaContext, options.exportName, options.metaContexts)) contexts.set(name, id);
    const missing = options.metaContexts.filter((name) => !contexts.has(name));
    if (missing.length > 0) {
      throw new BlockrepError('NBD_ERROR', `the NBD server did not grant the metadata context${missing.length > 1 ? 's' : ''} ${missing.join(', ')} for export ${JSON.stringify(options.exportName)} (a dirty bitmap must be exported with the export)`, {
        details: { option: 'NBD_OPT_SET_META_CONTEXT', missingContexts: missing },
      });
    }
  }
  const exportInfo = await go(channel, options.exportName);
  return { info: { ...exportInfo, exportName: options.exportName, structuredReplies }, contexts };
}

/** The metadata contexts the server offers for `queries` (e.g. `qemu:dirty-bitmap:`); then NBD_OPT_ABORT. */
export async function clientListMetaContexts(socket: Socket, reader: SocketReader, progress: HandshakeProgress, options: { exportName: string; queries: readonly string[] }): Promise<string[]> {
  const channel = await greet(socket, reader, progress);
  if (!(await negotiateStructuredReplies(channel))) {
    throw new BlockrepError('NBD_ERROR', 'the NBD server refused structured replies, without which it has no metadata contexts', { details: { option: 'NBD_OPT_STRUCTURED_REPLY' } });
  }
  const names = [...(await metaContexts(channel, nbdOption.listMetaContext, options.exportName, options.queries)).keys()];
  await abortHandshake(channel);
  return names;
}

async function greet(socket: Socket, reader: SocketReader, progress: HandshakeProgress): Promise<OptionChannel> {
  const { handshakeFlags } = decodeServerGreeting(await reader.read(nbdBytes.greeting));
  progress.greeted = true;
  // NO_ZEROES only matters after NBD_OPT_EXPORT_NAME; echo it when offered, so that reply is short.
  const clientFlags = nbdClientFlag.fixedNewstyle | (handshakeFlags & nbdHandshakeFlag.noZeroes ? nbdClientFlag.noZeroes : 0);
  socket.write(encodeClientFlags(clientFlags));
  return new OptionChannel(socket, reader, (clientFlags & nbdClientFlag.noZeroes) !== 0);
}

async function negotiateStructuredReplies(channel: OptionChannel): Promise<boolean> {
  channel.send(nbdOption.structuredReply);
  const reply = await channel.reply(nbdOption.structuredReply);
  if (reply.type === nbdOptionReply.ack) {
    if (reply.payload.byteLength !== 0) throw nbdProtocolError('NBD_REP_ACK carries data');
    return true;
  }
  if (reply.type === nbdOptionReply.errShutdown) throw optionRefused('structured replies', reply, { option: 'NBD_OPT_STRUCTURED_REPLY' });
  // Any other error: the server does not do structured replies (old servers say UNSUP).
  if (isError(reply.type)) return false;
  throw nbdProtocolError(`unexpected reply type ${reply.type} to NBD_OPT_STRUCTURED_REPLY`);
}

/** NBD_OPT_SET_META_CONTEXT or NBD_OPT_LIST_META_CONTEXT: name → id (ids are 0 for LIST). */
async function metaContexts(channel: OptionChannel, option: number, exportName: string, queries: readonly string[]): Promise<Map<string, number>> {
  const optionName = option === nbdOption.setMetaContext ? 'NBD_OPT_SET_META_CONTEXT' : 'NBD_OPT_LIST_META_CONTEXT';
  channel.send(option, encodeMetaContextData(exportName, queries));
  const contexts = new Map<string, number>();
  const ids = new Set<number>();
  for (let replies = 0; ; replies++) {
    if (replies > MAX_REPLIES_PER_OPTION) throw nbdProtocolError(`more than ${MAX_REPLIES_PER_OPTION} replies to ${optionName}`);
    const reply = await channel.reply(option);
    if (reply.type === nbdOptionReply.ack) {
      if (reply.payload.byteLength !== 0) throw nbdProtocolError('NBD_REP_ACK carries data');
      return contexts;
    }
    if (isError(reply.type)) throw optionRefused(`metadata contexts ${queries.join(', ')}`, reply, { option: optionName });
    if (reply.type !== nbdOptionReply.metaContext) throw nbdProtocolError(`unexpected reply type ${reply.type} to ${optionName}`);
    const { contextId, name } = decodeMetaContextReply(reply.payload);
    if (contexts.has(name)) throw nbdProtocolError(`metadata context ${name} was given twice`);
    if (option === nbdOption.setMetaContext) {
      // Block-status chunks name their context by id: ids must tell contexts apart.
      if (ids.has(contextId)) throw nbdProtocolError(`metadata context id ${contextId} was given to two contexts`);
      ids.add(contextId);
    }
    contexts.set(name, option === nbdOption.setMetaContext ? contextId : 0);
  }
}

type ExportFacts = Omit<NbdExportInfo, 'exportName' | 'structuredReplies'>;

async function go(channel: OptionChannel, exportName: string): Promise<ExportFacts> {
  channel.send(nbdOption.go, encodeGoData(exportName, [nbdInfo.blockSize]));
  let exported: { exportBytes: number; transmissionFlags: number } | undefined;
  let blockSize: { minimumBytes: number; preferredBytes: number; maximumPayloadBytes: number } | undefined;
  for (let replies = 0; ; replies++) {
    if (replies > MAX_REPLIES_PER_OPTION) throw nbdProtocolError(`more than ${MAX_REPLIES_PER_OPTION} replies to NBD_OPT_GO`);
    const reply = await channel.reply(nbdOption.go);
    if (reply.type === nbdOptionReply.info) {
      const info = decodeInfoReply(reply.payload);
      if (info.type === 'export') exported = info;
      else if (info.type === 'blockSize') blockSize = info;
      continue;
    }
    if (reply.type === nbdOptionReply.ack) {
      if (reply.payload.byteLength !== 0) throw nbdProtocolError('NBD_REP_ACK carries data');
      if (!exported) throw nbdProtocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
      return exportFacts(exported, blockSize);
    }
    if (reply.type === nbdOptionReply.errUnsup) {
      // A server older than NBD_OPT_GO: the old way, which ends the handshake without errors.
      channel.send(nbdOption.exportName, Buffer.from(exportName, 'utf8'));
      const zeroes = channel.noZeroes ? 0 : nbdBytes.exportNameZeroes;
      const old = decodeExportNameReply(await channel.reader.read(nbdBytes.exportNameReply + zeroes));
      return exportFacts(old, undefined);
    }
    if (isError(reply.type)) {
      const what = reply.type === nbdOptionReply.errUnknown ? `export ${JSON.stringify(exportName)} (no such export)` : `export ${JSON.stringify(exportName)}`;
      throw optionRefused(what, reply, { option: 'NBD_OPT_GO', exportName });
    }
    throw nbdProtocolError(`unexpected reply type ${reply.type} to NBD_OPT_GO`);
  }
}

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

function exportFacts(exported: { exportBytes: number; transmissionFlags: number }, blockSize: { minimumBytes: number; preferredBytes: number; maximumPayloadBytes: number } | undefined): ExportFacts {
  if ((exported.transmissionFlags & nbdTransmissionFlag.hasFlags) === 0) throw nbdProtocolError('the transmission flags lack NBD_FLAG_HAS_FLAGS');
  const minimumBlockBytes = blockSize?.minimumBytes ?? NBD_DEFAULT_MIN_BLOCK;
  const preferredBlockBytes = blockSize?.preferredBytes ?? NBD_DEFAULT_PREFERRED_BLOCK;
  const maximumPayloadBytes = blockSize?.maximumPayloadBytes ?? NBD_DEFAULT_MAX_PAYLOAD;
  if (!isPowerOfTwo(minimumBlockBytes) || minimumBlockBytes > NBD_MAX_MIN_BLOCK) throw nbdProtocolError(`minimum block size ${minimumBlockBytes} is not a power of two up to 64 KiB`);
  if (!isPowerOfTwo(preferredBlockBytes) || preferredBlockBytes < minimumBlockBytes) throw nbdProtocolError(`preferred block size ${preferredBlockBytes} is not a power of two at least the minimum ${minimumBlockBytes}`);
  if (maximumPayloadBytes < minimumBlockBytes) throw nbdProtocolError(`maximum payload ${maximumPayloadBytes} is under the minimum block size ${minimumBlockBytes}`);
  return {
    exportBytes: exported.exportBytes,
    transmissionFlags: exported.transmissionFlags,
    readOnly: (exported.transmissionFlags & nbdTransmissionFlag.readOnly) !== 0,
    minimumBlockBytes,
    preferredBlockBytes,
    maximumPayloadBytes,
  };
}

/** NBD_OPT_ABORT: the soft way to leave during the handshake. The server may close without a reply. */
async function abortHandshake(channel: OptionChannel): Promise<void> {
  channel.send(nbdOption.abort);
  try {
    await channel.reply(nbdOption.abort);
  } catch {}
}

/** Best effort during a failed handshake: tell the server we leave (the caller then destroys the socket). */
export function sendAbort(socket: Socket): void {
  if (!socket.destroyed && socket.writable) socket.write(encodeOption(nbdOption.abort));
}
