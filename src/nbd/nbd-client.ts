import { connect as netConnect, type Socket } from 'node:net';
import { BlockrepError, TaskPool, systemErrorCode, toBlockrepError } from '../shared/index.js';
import { formatNbdAddress, type NbdAddress } from './nbd-address.js';
import { NBD_DEFAULT_MAX_PAYLOAD, NBD_MAX_REQUEST_LENGTH, NBD_REPLY_FLAG_DONE, nbdBytes, nbdCommand, nbdErrnoName, nbdReplyType } from './nbd-constants.js';
import { clientHandshake, clientListMetaContexts, sendAbort, type HandshakeProgress, type NbdExportInfo } from './nbd-handshake.js';
import { nbdProtocolError } from './nbd-protocol-error.js';
import {
  MAX_BLOCK_STATUS_PAYLOAD_BYTES,
  MAX_ERROR_PAYLOAD_BYTES,
  decodeBlockStatus,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeOffsetDataPrefix,
  decodeOffsetHole,
  decodeSimpleReply,
  encodeRequest,
  isErrorChunkType,
  replyHeaderBytes,
  type ChunkHeader,
  type ErrorChunk,
} from './nbd-transmission-wire.js';
import { ReadCoverage } from './read-coverage.js';
import { SocketClosedError, SocketReader } from './socket-reader.js';

/**
 * An NBD client for reading an export: connect and handshake (structured replies, metadata
 * contexts, NBD_OPT_GO), then reads and block-status queries with several requests in flight,
 * matched to their replies by cookie. Every reply is checked against the request it answers;
 * a server that breaks the protocol gets the connection dropped (NBD_PROTOCOL), and every
 * wait ends: by the reply, by a timeout, or by the socket closing.
 */

export interface NbdConnectOptions {
  address: NbdAddress;
  /** Default: the empty name, the server's default export. */
  exportName?: string;
  /** Metadata contexts to select, e.g. `base:allocation`, `qemu:dirty-bitmap:NAME`; all must be granted. */
  metaContexts?: readonly string[];
  /** Ask for structured replies (default true); false is for tests of simple replies. */
  structuredReplies?: boolean;
  /** Connecting and the whole handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Each request, from sending it to its last reply chunk (default 60 s). */
  requestTimeoutMs?: number;
  /** Requests in flight at once (default 8, at most 64). */
  maxInFlight?: number;
  /** Largest read request; lowered to the server's maximum payload (default 32 MiB). */
  maxReadRequestBytes?: number;
  /** Largest block-status request length (default just under 4 GiB: QEMU before 8.2 takes no more). */
  maxBlockStatusRequestBytes?: number;
}

export interface NbdExtent {
  offset: number;
  length: number;
  /** Context flags: base:allocation bit 0 hole, bit 1 zero; qemu:dirty-bitmap bit 0 dirty. */
  flags: number;
}

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_IN_FLIGHT = 8;
const MAX_IN_FLIGHT_LIMIT = 64;
/** 4 GiB minus 64 KiB: under QEMU 7.2's limit and a multiple of every minimum block size. */
export const DEFAULT_MAX_BLOCK_STATUS_REQUEST_BYTES = NBD_MAX_REQUEST_LENGTH + 1 - 64 * 1024;
/** How long close() waits for the server to hang up after NBD_CMD_DISC. */
const CLOSE_WAIT_MS = 2_000;

interface Settle {
  resolve: () => void;
  reject: (err: BlockrepError) => void;
  timer: NodeJS.Timeout;
  /** Some chunk of this reply has arrived (a close now is mid-reply). */
  started: boolean;
  error: ErrorChunk | undefined;
}

interface PendingRead extends Settle {
  kind: 'read';
  offset: number;
  length: number;
  target: Buffer;
  coverage: ReadCoverage;
}

interface PendingStatus extends Settle {
  kind: 'status';
  offset: number;
  length: number;
  contextId: number;
  seenContexts: Set<number>;
  extents: NbdExtent[];
}

type Pending = PendingRead | PendingStatus;

function checkCount(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new BlockrepError('USAGE', `NBD option ${name} must be an integer from ${min} to ${max}, not ${value}`);
  return value;
}

async function openSocket(address: NbdAddress, timeoutMs: number): Promise<Socket> {
  const where = formatNbdAddress(address);
  return new Promise<Socket>((resolve, reject) => {
    const socket = address.kind === 'unix' ? netConnect({ path: address.path }) : netConnect({ host: address.host, port: address.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new BlockrepError('NBD_UNAVAILABLE', `no NBD server answered at ${where} within ${timeoutMs} ms`, { details: { address: where, timeout: true } }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      if (address.kind === 'tcp') socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      const code = systemErrorCode(err);
      reject(new BlockrepError('NBD_UNAVAILABLE', `no NBD server at ${where}: ${code ?? err.message}`, { cause: err, details: { address: where, errno: code } }));
    });
  });
}

/** Runs a handshake step with the deadline; a timeout or a close becomes a BlockrepError. */
async function withHandshake<T>(address: NbdAddress, timeoutMs: number | undefined, step: (socket: Socket, reader: SocketReader, progress: HandshakeProgress) => Promise<T>): Promise<{ socket: Socket; reader: SocketReader; result: T }> {
  const deadline = checkCount('handshakeTimeoutMs', timeoutMs, DEFAULT_HANDSHAKE_TIMEOUT_MS, 1, 3_600_000);
  const started = Date.now();
  const socket = await openSocket(address, deadline);
  const reader = new SocketReader(socket);
  let timedOut = false;
  const progress: HandshakeProgress = { greeted: false };
  const timer = setTimeout(
    () => {
      timedOut = true;
      socket.destroy();
    },
    Math.max(1, deadline - (Date.now() - started)),
  );
  try {
    const result = await step(socket, reader, progress);
    return { socket, reader, result };
  } catch (err) {
    sendAbort(socket);
    socket.destroy();
    const where = formatNbdAddress(address);
    if (timedOut) {
      // qemu-nbd without --shared serves one client: the next one is accepted but never greeted.
      const what = progress.greeted ? 'did not finish the handshake' : 'accepted the connection but sent no greeting (busy with another client?)';
      throw new BlockrepError('NBD_ERROR', `the NBD server at ${where} ${what} within ${deadline} ms`, { details: { address: where, timeout: true, greeted: progress.greeted } });
    }
    if (err instanceof SocketClosedError) throw nbdProtocolError(`the server at ${where} closed the connection during the handshake (${err.reason})`);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export class NbdClient {
  private readonly pending = new Map<bigint, Pending>();
  private readonly waitingForSlot: Array<{ resolve: () => void; reject: (err: BlockrepError) => void }> = [];
  private readonly idleWaiters: Array<() => void> = [];
  private closeRequested = false;
  private inFlight = 0;
  private nextCookie = 1n;
  private failure: BlockrepError | undefined;
  private closing: Promise<void> | undefined;
  private readonly readLoopDone: Promise<void>;
  private readonly contextNames: Map<number, string>;
  private readonly maxReadRequestBytes: number;

  private constructor(
    private readonly socket: Socket,
    private readonly reader: SocketReader,
    readonly info: NbdExportInfo,
    private readonly contextIds: ReadonlyMap<string, number>,
    private readonly where: string,
    private readonly requestTimeoutMs: number,
    private readonly maxInFlight: number,
    maxReadRequestBytes: number,
    private readonly maxBlockStatusRequestBytes: number,
  ) {
    this.contextNames = new Map([...contextIds].map(([name, id]) => [id, name]));
    // A server with no fixed limit says 0xffffffff; 32 MiB is what every server must accept.
    const serverMax = info.maximumPayloadBytes >= NBD_MAX_REQUEST_LENGTH ? NBD_DEFAULT_MAX_PAYLOAD : info.maximumPayloadBytes;
    const max = Math.min(maxReadRequestBytes, serverMax);
    this.maxReadRequestBytes = Math.max(info.minimumBlockBytes, max - (max % info.minimumBlockBytes));
    this.readLoopDone = this.readLoop();
  }

  /** Connects and negotiates. NBD_UNAVAILABLE when nothing listens; NBD_ERROR when the server refuses the export or a context. */
  static async connect(options: NbdConnectOptions): Promise<NbdClient> {
    const requestTimeoutMs = checkCount('requestTimeoutMs', options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS, 1, 24 * 3_600_000);
    const maxInFlight = checkCount('maxInFlight', options.maxInFlight, DEFAULT_MAX_IN_FLIGHT, 1, MAX_IN_FLIGHT_LIMIT);
    const maxRead = checkCount('maxReadRequestBytes', options.maxReadRequestBytes, NBD_DEFAULT_MAX_PAYLOAD, 1, NBD_DEFAULT_MAX_PAYLOAD);
    const maxStatus = checkCount('maxBlockStatusRequestBytes', options.maxBlockStatusRequestBytes, DEFAULT_MAX_BLOCK_STATUS_REQUEST_BYTES, 1, NBD_MAX_REQUEST_LENGTH);
    const metaContexts = [...new Set(options.metaContexts ?? [])];
    const exportName = options.exportName ?? '';
    const { socket, reader, result } = await withHandshake(options.address, options.handshakeTimeoutMs, (s, r, p) =>
      clientHandshake(s, r, p, { exportName, structuredReplies: options.structuredReplies ?? true, metaContexts }),
    );
    return new NbdClient(socket, reader, result.info, result.contexts, formatNbdAddress(options.address), requestTimeoutMs, maxInFlight, maxRead, maxStatus);
  }

  /**
   * The metadata contexts the server offers for an export and queries (NBD_OPT_LIST_META_CONTEXT),
   * e.g. ['qemu:dirty-bitmap:'] for every exported bitmap; the connection is then abandoned
   * with NBD_OPT_ABORT. No queries: every context the server has.
   */
  static async listMetaContexts(options: { address: NbdAddress; exportName?: string; queries?: readonly string[]; handshakeTimeoutMs?: number }): Promise<string[]> {
    const { socket, result } = await withHandshake(options.address, options.handshakeTimeoutMs, (s, r, p) => clientListMetaContexts(s, r, p, { exportName: options.exportName ?? '', queries: options.queries ?? [] }));
    socket.destroy();
    return result;
  }

  /** The selected metadata contexts' names. */
  get metaContexts(): string[] {
    return [...this.contextIds.keys()];
  }

  /** Bytes [offset, offset+length) of the export; holes read as zeros. Large reads are split. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, 'read');
    const align = this.info.minimumBlockBytes;
    const start = offset - (offset % align);
    const end = Math.min(this.info.exportBytes, Math.ceil((offset + length) / align) * align);
    const buf = Buffer.allocUnsafe(end - start);
    const pool = new TaskPool(this.maxInFlight);
    for (let at = start; at < end; at += this.maxReadRequestBytes) {
      const pieceEnd = Math.min(end, at + this.maxReadRequestBytes);
      const target = buf.subarray(at - start, pieceEnd - start);
      await pool.submit(() => this.readRequest(at, pieceEnd - at, target));
    }
    await pool.drain();
    // A minimum block size over 1 widened an unaligned read; give back what was asked.
    return start === offset && end === offset + length ? buf : buf.subarray(offset - start, offset - start + length);
  }

  /**
   * One NBD_CMD_BLOCK_STATUS for `context` over [offset, offset+length): the extents the server
   * gave, clipped to the range. The server may cover less than the range (never nothing);
   * extents() loops until it is covered.
   */
  async blockStatus(context: string, offset: number, length: number): Promise<NbdExtent[]> {
    const contextId = this.contextIds.get(context);
    if (contextId === undefined) throw new BlockrepError('INTERNAL', `metadata context ${context} was not selected when connecting (selected: ${this.metaContexts.join(', ') || 'none'})`);
    this.checkRange(offset, length, 'block-status query');
    const align = this.info.minimumBlockBytes;
    const start = offset - (offset % align);
    const maxRequest = Math.max(align, this.maxBlockStatusRequestBytes - (this.maxBlockStatusRequestBytes % align));
    const end = Math.min(this.info.exportBytes, start + Math.min(maxRequest, Math.ceil((offset + length - start) / align) * align));
    const extents = await this.statusRequest(contextId, start, end - start);
    const out: NbdExtent[] = [];
    for (const extent of extents) {
      const from = Math.max(extent.offset, offset);
      const to = Math.min(extent.offset + extent.length, offset + length);
      if (to > from) out.push({ offset: from, length: to - from, flags: extent.flags });
    }
    return out;
  }

  /** Every extent of `context` over [offset, offset+length), in order, as many requests as it takes. */
  async *extents(context: string, offset: number, length: number): AsyncGenerator<NbdExtent, void, undefined> {
    this.checkRange(offset, length, 'block-status query');
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const extents = await this.blockStatus(context, at, end - at);
      const last = extents[extents.length - 1];
      // Extents start at the request's offset and are nonzero, so only an aligned-down start can fail to reach past `at`.
      if (!last || last.offset + last.length <= at) {
        const err = nbdProtocolError(`block status for ${context} at offset ${at} did not advance`, { offset: at });
        this.fail(err);
        throw err;
      }
      for (const extent of extents) yield extent;
      at = last.offset + last.length;
    }
  }

  /**
   * Ends the session: waits for the requests already sent or queued, sends NBD_CMD_DISC, and
   * waits (briefly) for the server to close. A read still splitting into requests fails with
   * NBD_ERROR (details.closed). Safe to call twice, and after a failure.
   */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    this.closeRequested = true;
    // Requests already submitted finish (each is bounded by its timeout); new ones are refused.
    if (this.inFlight > 0 || this.waitingForSlot.length > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (this.failure) {
      this.socket.destroy();
      return;
    }
    this.failure = new BlockrepError('NBD_ERROR', `the NBD connection to ${this.where} is closed`, { details: { closed: true } });
    for (const waiter of this.waitingForSlot.splice(0)) waiter.reject(this.failure);
    const closed = new Promise<void>((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
    this.socket.end(encodeRequest({ flags: 0, type: nbdCommand.disc, cookie: 0n, offset: 0, length: 0 }));
    const timer = setTimeout(() => this.socket.destroy(), CLOSE_WAIT_MS);
    await closed;
    clearTimeout(timer);
    await this.readLoopDone;
  }

  private checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.info.exportBytes) {
      throw new BlockrepError('INTERNAL', `NBD ${what} of [${offset}, +${length}) is outside the export (${this.info.exportBytes} bytes)`);
    }
  }

  // ---- requests ----

  private async acquireSlot(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.inFlight < this.maxInFlight) {
      this.inFlight++;
      return;
    }
    await new Promise<void>((resolve, reject) => this.waitingForSlot.push({ resolve, reject }));
  }

  private releaseSlot(): void {
    const next = this.waitingForSlot.shift();
    if (next) next.resolve();
    else this.inFlight--;
    if (this.inFlight === 0) for (const idle of this.idleWaiters.splice(0)) idle();
  }

  private async send<P extends Pending>(type: number, offset: number, length: number, make: (settle: Settle) => P): Promise<void> {
    if (this.closeRequested && !this.failure) throw new BlockrepError('NBD_ERROR', `the NBD connection to ${this.where} is closing`, { details: { closed: true } });
    await this.acquireSlot();
    try {
      if (this.failure) throw this.failure;
      const cookie = this.nextCookie++;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          const name = type === nbdCommand.read ? 'NBD_CMD_READ' : 'NBD_CMD_BLOCK_STATUS';
          this.fail(new BlockrepError('NBD_ERROR', `the NBD server at ${this.where} did not answer ${name} at offset ${offset} within ${this.requestTimeoutMs} ms`, { details: { command: name, offset, length, timeout: true } }));
        }, this.requestTimeoutMs);
        this.pending.set(cookie, make({ resolve, reject, timer, started: false, error: undefined }));
        this.socket.write(encodeRequest({ flags: 0, type, cookie, offset, length }));
      });
    } finally {
      this.releaseSlot();
    }
  }

  private readRequest(offset: number, length: number, target: Buffer): Promise<void> {
    return this.send(nbdCommand.read, offset, length, (settle) => ({ ...settle, kind: 'read', offset, length, target, coverage: new ReadCoverage() }));
  }

  private async statusRequest(contextId: number, offset: number, length: number): Promise<NbdExtent[]> {
    const extents: NbdExtent[] = [];
    await this.send(nbdCommand.blockStatus, offset, length, (settle) => ({ ...settle, kind: 'status', offset, length, contextId, seenContexts: new Set(), extents }));
    return extents;
  }

  /** Drops the connection and fails every request with `err` (the first failure wins). */
  private fail(err: BlockrepError): void {
    if (this.failure) return;
    this.failure = err;
    for (const [cookie, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(cookie);
      p.reject(err);
    }
    for (const waiter of this.waitingForSlot.splice(0)) waiter.reject(err);
    this.socket.destroy();
  }

  private finish(cookie: bigint, p: Pending, err?: BlockrepError): void {
    clearTimeout(p.timer);
    this.pending.delete(cookie);
    if (err) p.reject(err);
    else p.resolve();
  }

  // ---- replies ----

  private async readLoop(): Promise<void> {
    let inMessage = false;
    try {
      for (;;) {
        const first = await this.reader.read(4);
        inMessage = true;
        const headerBytes = replyHeaderBytes(first);
        const header = Buffer.concat([first, await this.reader.read(headerBytes - 4)]);
        if (headerBytes === nbdBytes.simpleReply) await this.onSimpleReply(header);
        else await this.onChunk(decodeChunkHeader(header));
        inMessage = false;
      }
    } catch (err) {
      if (err instanceof SocketClosedError) {
        if (this.failure) return;
        const midReply = inMessage || [...this.pending.values()].some((p) => p.started);
        if (midReply) this.fail(nbdProtocolError(`the server at ${this.where} closed the connection in the middle of a reply`));
        else this.fail(new BlockrepError('NBD_ERROR', `the NBD server at ${this.where} closed the connection${this.pending.size > 0 ? ` with ${this.pending.size} request(s) unanswered` : ''}`, { details: { closed: true } }));
      } else {
        this.fail(toBlockrepError(err));
      }
    }
  }

  private pendingFor(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw nbdProtocolError(`a reply for cookie ${cookie}, which no request in flight has`, { cookie: cookie.toString() });
    return p;
  }

  private async onSimpleReply(header: Buffer): Promise<void> {
    const { error, cookie } = decodeSimpleReply(header);
    const p = this.pendingFor(cookie);
    if (p.started) throw nbdProtocolError('a simple reply to a request whose structured reply had begun');
    if (error !== 0) {
      this.finish(cookie, p, this.commandError(p, { error, message: '' }));
      return;
    }
    if (p.kind === 'status') throw nbdProtocolError('a simple reply claims success for a block-status query, which needs a BLOCK_STATUS chunk');
    if (this.info.structuredReplies) throw nbdProtocolError('a simple reply to a read, after structured replies were negotiated');
    p.started = true;
    await this.reader.readInto(p.target, 0, p.length);
    this.finish(cookie, p);
  }

  private async onChunk(h: ChunkHeader): Promise<void> {
    if (!this.info.structuredReplies) throw nbdProtocolError('a structured reply, which was not negotiated');
    const p = this.pendingFor(h.cookie);
    p.started = true;
    const done = (h.flags & NBD_REPLY_FLAG_DONE) !== 0;
    if (h.type === nbdReplyType.none) {
      if (h.length !== 0) throw nbdProtocolError(`a NONE chunk has length ${h.length}`);
      if (!done) throw nbdProtocolError('a NONE chunk without the DONE flag');
    } else if (isErrorChunkType(h.type)) {
      if (h.length > MAX_ERROR_PAYLOAD_BYTES) throw nbdProtocolError(`an error chunk of ${h.length} bytes is over the ${MAX_ERROR_PAYLOAD_BYTES}-byte bound`);
      const chunk = decodeErrorChunk(h.type, await this.reader.read(h.length));
      if (chunk.offset !== undefined && (chunk.offset < p.offset || chunk.offset >= p.offset + p.length)) {
        throw nbdProtocolError(`an error at offset ${chunk.offset}, outside the request [${p.offset}, +${p.length})`);
      }
      p.error ??= chunk;
    } else if (p.kind === 'read') {
      await this.onReadChunk(h, p);
    } else if (h.type === nbdReplyType.blockStatus) {
      await this.onStatusChunk(h, p);
    } else {
      throw nbdProtocolError(`chunk type ${h.type} in reply to a ${p.kind === 'status' ? 'block-status query' : 'read'}`);
    }
    if (done) this.complete(h.cookie, p);
  }

  private async onReadChunk(h: ChunkHeader, p: PendingRead): Promise<void> {
    const requestEnd = p.offset + p.length;
    if (h.type === nbdReplyType.offsetData) {
      // Bound the length before reading: the data goes into the caller's buffer, nowhere else.
      if (h.length < 9 || h.length - 8 > p.length) throw nbdProtocolError(`an OFFSET_DATA chunk of ${h.length} bytes for a read of ${p.length}`);
      const { offset, dataBytes } = decodeOffsetDataPrefix(await this.reader.read(8), h.length);
      this.cover(p, offset, dataBytes, 'data');
      await this.reader.readInto(p.target, offset - p.offset, offset - p.offset + dataBytes);
    } else if (h.type === nbdReplyType.offsetHole) {
      if (h.length !== 12) throw nbdProtocolError(`an OFFSET_HOLE chunk has length ${h.length}, not 12`);
      const { offset, holeBytes } = decodeOffsetHole(await this.reader.read(12));
      this.cover(p, offset, holeBytes, 'hole');
      p.target.fill(0, offset - p.offset, offset - p.offset + holeBytes);
    } else {
      throw nbdProtocolError(`chunk type ${h.type} in reply to a read of [${p.offset}, ${requestEnd})`);
    }
  }

  private cover(p: PendingRead, offset: number, bytes: number, what: string): void {
    if (offset < p.offset || offset + bytes > p.offset + p.length) {
      throw nbdProtocolError(`${what} chunk [${offset}, +${bytes}) lies outside the read [${p.offset}, +${p.length})`, { offset, length: bytes });
    }
    if (!p.coverage.add(offset, offset + bytes)) throw nbdProtocolError(`${what} chunk [${offset}, +${bytes}) overlaps an earlier chunk of the same read`, { offset, length: bytes });
  }

  private async onStatusChunk(h: ChunkHeader, p: PendingStatus): Promise<void> {
    if (h.length > MAX_BLOCK_STATUS_PAYLOAD_BYTES) throw nbdProtocolError(`a BLOCK_STATUS chunk of ${h.length} bytes is over the ${MAX_BLOCK_STATUS_PAYLOAD_BYTES}-byte bound`);
    const chunk = decodeBlockStatus(await this.reader.read(h.length));
    const name = this.contextNames.get(chunk.contextId);
    if (name === undefined) throw nbdProtocolError(`a BLOCK_STATUS chunk for context id ${chunk.contextId}, which was never selected`);
    if (p.seenContexts.has(chunk.contextId)) throw nbdProtocolError(`two BLOCK_STATUS chunks for ${name} in one reply`);
    p.seenContexts.add(chunk.contextId);
    // Every extent but the last must end inside the request; the last may run past it (clipped by the caller).
    let at = p.offset;
    const count = chunk.lengths.length;
    for (let i = 0; i < count; i++) {
      if (i > 0 && at >= p.offset + p.length) throw nbdProtocolError(`${name}: extent ${i} starts at ${at}, past the queried range [${p.offset}, +${p.length})`);
      const length = chunk.lengths[i]!;
      if (chunk.contextId === p.contextId) p.extents.push({ offset: at, length, flags: chunk.flags[i]! });
      at += length;
    }
    if (at > this.info.exportBytes) throw nbdProtocolError(`${name}: extents run to ${at}, past the end of the export (${this.info.exportBytes} bytes)`);
  }

  private complete(cookie: bigint, p: Pending): void {
    if (p.error) {
      this.finish(cookie, p, this.commandError(p, p.error));
    } else if (p.kind === 'read' && p.coverage.coveredBytes !== p.length) {
      throw nbdProtocolError(`a read of [${p.offset}, +${p.length}) ended with only ${p.coverage.coveredBytes} bytes covered`);
    } else if (p.kind === 'status' && p.seenContexts.size !== this.contextIds.size) {
      throw nbdProtocolError(`a block-status reply ended with ${p.seenContexts.size} of ${this.contextIds.size} contexts`);
    } else {
      this.finish(cookie, p);
    }
  }

  private commandError(p: Pending, chunk: ErrorChunk): BlockrepError {
    const command = p.kind === 'read' ? 'NBD_CMD_READ' : 'NBD_CMD_BLOCK_STATUS';
    const errno = nbdErrnoName(chunk.error);
    const at = chunk.offset === undefined ? '' : ` at offset ${chunk.offset}`;
    return new BlockrepError('NBD_ERROR', `the NBD server at ${this.where} failed ${command} of [${p.offset}, +${p.length})${at}: ${errno}${chunk.message ? ` (${chunk.message})` : ''}`, {
      details: { command, offset: p.offset, length: p.length, errno, ...(chunk.offset === undefined ? {} : { errorOffset: chunk.offset }) },
    });
  }
}
