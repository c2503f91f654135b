import { randomInt } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { z } from 'zod';
import { BlockrepError, systemErrorCode } from '../shared/index.js';
import { parseJsonObject } from './json-line-reader.js';

/**
 * A client of the QEMU guest agent (QGA) over its host-side unix socket. The agent has no
 * greeting and, when it is not running in the guest, QEMU still accepts the connection and
 * the writes while nothing ever answers: every call has a timeout, and the stream is resynced
 * (a raw 0xFF byte, then guest-sync-delimited with a fresh id; everything up to the agent's
 * own 0xFF is discarded) on connect and after every timeout, so that a late reply to an
 * abandoned command is never taken for the answer to the next one. Commands run one at a time.
 */

export const DEFAULT_SYNC_TIMEOUT_MS = 5_000;
export const DEFAULT_FREEZE_TIMEOUT_MS = 60_000;
export const DEFAULT_THAW_TIMEOUT_MS = 30_000;
export const DEFAULT_AGENT_COMMAND_TIMEOUT_MS = 10_000;

export interface GuestAgentOptions {
  syncTimeoutMs?: number;
  commandTimeoutMs?: number;
}

const errorReplySchema = z.object({ error: z.object({ class: z.string(), desc: z.string() }) });
export const fsfreezeStatusSchema = z.enum(['thawed', 'frozen']);
export type FsfreezeStatus = z.infer<typeof fsfreezeStatusSchema>;
const countSchema = z.number().int().nonnegative();

/** The largest resync id: the agent echoes it as a JSON number. */
const MAX_SYNC_ID = 2 ** 48;
const MAX_LINE_BYTES = 16 * 1024 * 1024;

interface Waiting {
  /** Called with each complete line (synced) or each line after an 0xFF (syncing). */
  onLine: (line: Buffer, afterDelimiter: boolean) => boolean;
  fail: (err: BlockrepError) => void;
}

export class GuestAgentClient {
  private buffer: Buffer = Buffer.alloc(0);
  /** While resyncing, bytes before the agent's 0xFF are discarded. */
  private syncing = false;
  private needsSync = true;
  private waiting: Waiting | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;
  private closedError: BlockrepError | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
    private readonly syncTimeoutMs: number,
    private readonly commandTimeoutMs: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const closed = (why: string, cause?: unknown): void => {
      if (this.closedError) return;
      this.closedError = new BlockrepError('AGENT_ERROR', `the connection to the guest agent at ${socketPath} ${why}`, cause === undefined ? undefined : { cause });
      this.waiting?.fail(this.closedError);
    };
    socket.on('close', () => closed('was closed'));
    socket.on('error', (err) => closed(`failed: ${err.message}`, err));
  }

  /**
   * Connects and resyncs. AGENT_UNAVAILABLE when the socket is absent or no agent answers the
   * resync in time (not running in the guest, or another client holds the channel).
   */
  static async connect(socketPath: string, options: GuestAgentOptions = {}): Promise<GuestAgentClient> {
    const socket = await openSocket(socketPath);
    const client = new GuestAgentClient(socket, socketPath, options.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS, options.commandTimeoutMs ?? DEFAULT_AGENT_COMMAND_TIMEOUT_MS);
    try {
      await client.serialize(() => client.resync());
      return client;
    } catch (err) {
      client.destroy();
      if (err instanceof BlockrepError && err.code === 'AGENT_ERROR' && err.details?.timeout === true) {
        throw new BlockrepError(
          'AGENT_UNAVAILABLE',
          `no guest agent answers at ${socketPath} (no reply within ${client.syncTimeoutMs / 1000} s): qemu-guest-agent is not running in the guest, or another client holds its channel`,
          { cause: err, details: { socket: socketPath } },
        );
      }
      throw err;
    }
  }

  /** Runs a command (resyncing first if needed); checks the reply's `return` with `schema`. */
  execute<S extends z.ZodType>(command: string, args: Record<string, unknown> | undefined, schema: S, options: { timeoutMs?: number } = {}): Promise<z.infer<S>> {
    return this.serialize(async () => {
      if (this.needsSync) await this.resync();
      const raw = await this.call(command, args, options.timeoutMs ?? this.commandTimeoutMs);
      const parsed = schema.safeParse(raw);
      if (!parsed.success) {
        throw new BlockrepError('AGENT_ERROR', `unexpected reply from the guest agent to ${command}: ${z.prettifyError(parsed.error).replaceAll('\n', '; ')}`, {
          details: { command },
        });
      }
      return parsed.data;
    });
  }

  ping(timeoutMs?: number): Promise<unknown> {
    return this.execute('guest-ping', undefined, z.unknown(), timeoutMs === undefined ? {} : { timeoutMs });
  }

  /** Freezes every freezable filesystem; returns how many were frozen (0: none freezable). */
  freeze(timeoutMs = DEFAULT_FREEZE_TIMEOUT_MS): Promise<number> {
    return this.execute('guest-fsfreeze-freeze', undefined, countSchema, { timeoutMs });
  }

  /** Freezes the filesystems mounted at `mountpoints`. */
  freezeList(mountpoints: string[], timeoutMs = DEFAULT_FREEZE_TIMEOUT_MS): Promise<number> {
    return this.execute('guest-fsfreeze-freeze-list', { mountpoints }, countSchema, { timeoutMs });
  }

  /** Thaws; returns how many filesystems were thawed (0 if none was frozen). */
  thaw(timeoutMs = DEFAULT_THAW_TIMEOUT_MS): Promise<number> {
    return this.execute('guest-fsfreeze-thaw', undefined, countSchema, { timeoutMs });
  }

  status(timeoutMs?: number): Promise<FsfreezeStatus> {
    return this.execute('guest-fsfreeze-status', undefined, fsfreezeStatusSchema, timeoutMs === undefined ? {} : { timeoutMs });
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 1000).unref();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private serialize<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** 0xFF, then guest-sync-delimited; accepts only the agent's 0xFF followed by our id. */
  private async resync(): Promise<void> {
    const id = randomInt(1, MAX_SYNC_ID);
    this.buffer = Buffer.alloc(0);
    this.syncing = true;
    try {
      await this.exchange(
        Buffer.concat([Buffer.from([0xff]), Buffer.from(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`)]),
        'guest-sync-delimited',
        this.syncTimeoutMs,
        (msg, afterDelimiter) => afterDelimiter && msg !== undefined && msg.return === id,
      );
      this.needsSync = false;
    } finally {
      this.syncing = false;
    }
  }

  private async call(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    const id = `blockrep-${this.nextId++}`;
    const line = `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`;
    const msg = await this.exchange(Buffer.from(line), command, timeoutMs, (m) => m !== undefined && m.id === id);
    if ('return' in msg) return msg.return;
    const err = errorReplySchema.safeParse(msg);
    if (err.success) {
      throw new BlockrepError('AGENT_ERROR', `the guest agent refused ${command}: ${err.data.error.desc}`, {
        details: { command, errorClass: err.data.error.class, desc: err.data.error.desc },
      });
    }
    throw new BlockrepError('AGENT_ERROR', `unexpected reply from the guest agent to ${command}`, { details: { command } });
  }

  /** Writes `bytes` and waits for the first line that `accept` takes; times out (then resync). */
  private exchange(
    bytes: Buffer,
    command: string,
    timeoutMs: number,
    accept: (msg: Record<string, unknown> | undefined, afterDelimiter: boolean) => boolean,
  ): Promise<Record<string, unknown>> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        this.needsSync = true;
        reject(new BlockrepError('AGENT_ERROR', `the guest agent did not answer ${command} within ${timeoutMs / 1000} s`, { details: { command, timeout: true } }));
      }, timeoutMs);
      this.waiting = {
        onLine: (line, afterDelimiter) => {
          const msg = parseJsonObject(line);
          if (!accept(msg, afterDelimiter)) return false;
          clearTimeout(timer);
          this.waiting = undefined;
          resolve(msg ?? {});
          return true;
        },
        fail: (err) => {
          clearTimeout(timer);
          this.waiting = undefined;
          reject(err);
        },
      };
      this.socket.write(bytes);
    });
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buffer, chunk]);
    for (;;) {
      if (this.syncing) {
        // Discard everything up to (and including) the agent's 0xFF; then read lines.
        const ff = this.buffer.indexOf(0xff);
        if (ff < 0) {
          this.buffer = Buffer.alloc(0);
          return;
        }
        const nl = this.buffer.indexOf(0x0a, ff);
        if (nl < 0) break;
        const line = this.buffer.subarray(ff + 1, nl);
        this.buffer = this.buffer.subarray(nl + 1);
        this.waiting?.onLine(line, true);
        continue;
      }
      const nl = this.buffer.indexOf(0x0a);
      if (nl < 0) break;
      let line = this.buffer.subarray(0, nl);
      this.buffer = this.buffer.subarray(nl + 1);
      const ff = line.lastIndexOf(0xff);
      if (ff >= 0) line = line.subarray(ff + 1);
      // A line nobody waits for (a late reply to an abandoned command) is dropped.
      this.waiting?.onLine(line, ff >= 0);
    }
    if (this.buffer.length > MAX_LINE_BYTES) {
      this.buffer = Buffer.alloc(0);
      this.needsSync = true;
    }
  }
}

function openSocket(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: socketPath });
    const onError = (err: Error): void => {
      socket.destroy();
      const sys = systemErrorCode(err);
      const why = sys === 'ENOENT' ? 'no such socket' : sys === 'ECONNREFUSED' ? 'nothing listens there' : sys === 'ENOTSOCK' ? 'not a socket' : err.message;
      reject(
        new BlockrepError('AGENT_UNAVAILABLE', `cannot connect to the guest agent's socket ${socketPath}: ${why}`, {
          cause: err,
          details: { socket: socketPath, errno: sys },
        }),
      );
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}
