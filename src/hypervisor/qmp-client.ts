import { connect, type Socket } from 'node:net';
import { z } from 'zod';
import { BlockrepError, systemErrorCode } from '../shared/index.js';
import { JsonLineReader, parseJsonObject } from './json-line-reader.js';

/**
 * A client of QEMU's monitor (QMP) over a unix socket: greeting and capability negotiation,
 * commands matched to their replies by id, replies checked with zod, timeouts, and events
 * handed to waiters that are registered before the command that causes them is sent (QEMU
 * may send an event before the reply of the command that caused it).
 */

export const qmpGreetingSchema = z.object({
  QMP: z.object({
    version: z.object({
      qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
      package: z.string().optional(),
    }),
    capabilities: z.array(z.string()),
  }),
});
export type QmpGreeting = z.infer<typeof qmpGreetingSchema>;

const errorReplySchema = z.object({ error: z.object({ class: z.string(), desc: z.string() }) });

export const qmpEventSchema = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }).optional(),
});
export type QmpEvent = z.infer<typeof qmpEventSchema>;

export interface QmpClientOptions {
  /** How long to wait for QEMU's greeting; a monitor held by another client never sends it. */
  greetingTimeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
}

export const DEFAULT_GREETING_TIMEOUT_MS = 5_000;
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

/** The QMP error class of a failed command (GenericError, DeviceNotFound, ...), if it is one. */
export function qmpErrorClass(err: unknown): string | undefined {
  if (err instanceof BlockrepError && err.code === 'QMP_ERROR' && typeof err.details?.errorClass === 'string') return err.details.errorClass;
  return undefined;
}

interface PendingCommand {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: BlockrepError) => void;
  timer: NodeJS.Timeout;
}

/** A waiter for one event; `promise` never rejects unhandled: cancel() settles it quietly. */
export interface EventWaiter<T> {
  readonly promise: Promise<T>;
  cancel(): void;
}

interface WaiterEntry {
  name: string;
  match: (data: Record<string, unknown>) => boolean;
  deliver: (event: QmpEvent) => void;
  fail: (err: BlockrepError) => void;
}

export class QmpClient {
  private nextId = 1;
  private readonly pending = new Map<string, PendingCommand>();
  private readonly waiters = new Set<WaiterEntry>();
  private readonly listeners = new Set<(event: QmpEvent) => void>();
  private closedError: BlockrepError | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
    readonly greeting: QmpGreeting,
    private readonly commandTimeoutMs: number,
  ) {}

  /**
   * Connects, reads the greeting and negotiates capabilities (no OOB). QMP_UNAVAILABLE when
   * nothing listens at the path; QMP_BUSY when the monitor accepts the connection but sends no
   * greeting in time (it serves one client at a time).
   */
  static async connect(socketPath: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const greetingTimeoutMs = options.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS;
    const socket = await openSocket(socketPath);
    let client: QmpClient | undefined;
    try {
      const greeting = await readGreeting(socket, socketPath, greetingTimeoutMs);
      client = new QmpClient(socket, socketPath, greeting.greeting, options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
      client.attach(greeting.reader);
      await client.execute('qmp_capabilities', {}, z.object({}).loose(), { timeoutMs: greetingTimeoutMs });
      return client;
    } catch (err) {
      if (client) client.destroy();
      else socket.destroy();
      throw err;
    }
  }

  private attach(reader: { setHandler: (onLine: (line: Buffer) => void) => void }): void {
    reader.setHandler((line) => this.onLine(line));
    this.socket.on('close', () => this.onClosed(new BlockrepError('QMP_ERROR', `the connection to QEMU's monitor at ${this.socketPath} was closed (did the VM stop?)`)));
    this.socket.on('error', (err) => this.onClosed(new BlockrepError('QMP_ERROR', `the connection to QEMU's monitor at ${this.socketPath} failed: ${err.message}`, { cause: err })));
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /**
   * Runs a command and returns its `return` value checked against `schema`. A failed command is
   * QMP_ERROR with details { command, errorClass, desc } (match on errorClass, never desc).
   */
  async execute<S extends z.ZodType>(command: string, args: Record<string, unknown> | undefined, schema: S, options: { timeoutMs?: number } = {}): Promise<z.infer<S>> {
    const raw = await this.executeRaw(command, args, options);
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      throw new BlockrepError('QMP_ERROR', `unexpected reply from QEMU to ${command}: ${z.prettifyError(parsed.error).replaceAll('\n', '; ')}`, {
        details: { command },
      });
    }
    return parsed.data;
  }

  /** Sends a command; resolves with its unchecked `return` value. */
  executeRaw(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `blockrep-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    const message = JSON.stringify({ execute: command, ...(args && Object.keys(args).length > 0 ? { arguments: args } : {}), id });
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BlockrepError('QMP_ERROR', `QEMU did not answer ${command} within ${formatSeconds(timeoutMs)}`, { details: { command, timeout: true } }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(`${message}\n`);
    });
  }

  /**
   * Registers a waiter for the next event `name` whose data satisfies `match`. Register it
   * before sending the command that causes the event.
   */
  waitForEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, options: { timeoutMs?: number } = {}): EventWaiter<QmpEvent> {
    let settle!: { resolve: (e: QmpEvent) => void; reject: (err: BlockrepError) => void };
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      settle = { resolve, reject };
    });
    promise.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const entry: WaiterEntry = {
      name,
      match,
      deliver: (event) => {
        done();
        settle.resolve(event);
      },
      fail: (err) => {
        done();
        settle.reject(err);
      },
    };
    const done = (): void => {
      if (timer) clearTimeout(timer);
      this.waiters.delete(entry);
    };
    if (this.closedError) {
      settle.reject(this.closedError);
    } else {
      this.waiters.add(entry);
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => entry.fail(new BlockrepError('QMP_ERROR', `QEMU sent no ${name} event within ${formatSeconds(options.timeoutMs ?? 0)}`, { details: { event: name, timeout: true } })), options.timeoutMs);
      }
    }
    return {
      promise,
      cancel: () => {
        if (this.waiters.has(entry)) entry.fail(new BlockrepError('QMP_ERROR', `wait for ${name} cancelled`));
      },
    };
  }

  /** Calls `listener` for every event; returns the function that removes it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Closes the connection; pending commands fail. */
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

  /** Drops the connection at once. */
  destroy(): void {
    this.socket.destroy();
  }

  private onLine(line: Buffer): void {
    const msg = parseJsonObject(line);
    if (!msg) return; // QMP sends only JSON objects; anything else is ignored, not fatal
    if ('event' in msg) {
      const parsed = qmpEventSchema.safeParse(msg);
      if (parsed.success) this.dispatchEvent(parsed.data);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return; // a reply to a command that timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('return' in msg) {
      p.resolve(msg.return);
      return;
    }
    const err = errorReplySchema.safeParse(msg);
    if (err.success) {
      const { class: errorClass, desc } = err.data.error;
      p.reject(new BlockrepError('QMP_ERROR', `QEMU refused ${p.command}: ${desc}`, { details: { command: p.command, errorClass, desc } }));
    } else {
      p.reject(new BlockrepError('QMP_ERROR', `unexpected reply from QEMU to ${p.command}: ${line.toString('utf8').slice(0, 200)}`, { details: { command: p.command } }));
    }
  }

  private dispatchEvent(event: QmpEvent): void {
    const data = event.data ?? {};
    for (const w of [...this.waiters]) {
      if (w.name === event.event && w.match(data)) w.deliver(event);
    }
    for (const l of [...this.listeners]) l(event);
  }

  private onClosed(err: BlockrepError): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(err);
    }
    for (const w of [...this.waiters]) w.fail(err);
  }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

/** Connects a unix socket; maps "nothing there" errors to QMP_UNAVAILABLE. */
function openSocket(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: socketPath });
    const onError = (err: Error): void => {
      socket.destroy();
      const sys = systemErrorCode(err);
      const why =
        sys === 'ENOENT'
          ? 'no such socket'
          : sys === 'ECONNREFUSED'
            ? 'nothing listens there (the VM is not running?)'
            : sys === 'ENOTSOCK'
              ? 'not a socket'
              : sys === 'EACCES' || sys === 'EPERM'
                ? 'permission denied'
                : err.message;
      reject(
        new BlockrepError('QMP_UNAVAILABLE', `cannot connect to QEMU's monitor at ${socketPath}: ${why}. Start the VM with -qmp unix:${socketPath},server=on,wait=off`, {
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

/**
 * Reads the greeting line. The reader it returns keeps the bytes that followed the greeting
 * until the client installs its line handler.
 */
function readGreeting(
  socket: Socket,
  socketPath: string,
  timeoutMs: number,
): Promise<{ greeting: QmpGreeting; reader: { setHandler: (onLine: (line: Buffer) => void) => void } }> {
  return new Promise((resolve, reject) => {
    let handler: ((line: Buffer) => void) | undefined;
    const queued: Buffer[] = [];
    let greeting: QmpGreeting | undefined;
    let failed = false;
    const fail = (err: BlockrepError): void => {
      if (failed || greeting) return;
      failed = true;
      clearTimeout(timer);
      reject(err);
    };
    const reader = new JsonLineReader(
      (line) => {
        if (greeting === undefined) {
          const parsed = qmpGreetingSchema.safeParse(parseJsonObject(line));
          if (!parsed.success) {
            fail(new BlockrepError('QMP_UNAVAILABLE', `${socketPath} is not a QEMU monitor (QMP): it did not send a QMP greeting`, { details: { socket: socketPath } }));
            return;
          }
          greeting = parsed.data;
          clearTimeout(timer);
          resolve({
            greeting,
            reader: {
              setHandler: (onLine) => {
                handler = onLine;
                for (const l of queued.splice(0)) onLine(l);
              },
            },
          });
          return;
        }
        if (handler) handler(line);
        else queued.push(line);
      },
      (bytes) => {
        socket.destroy(new Error(`QMP line of more than ${bytes} bytes`));
      },
    );
    const timer = setTimeout(() => {
      fail(
        new BlockrepError(
          'QMP_BUSY',
          `QEMU's monitor at ${socketPath} accepted the connection but sent no greeting within ${formatSeconds(timeoutMs)}: another client holds it (QMP serves one client at a time; under libvirt, use virsh). Try again when it is free`,
          { details: { socket: socketPath } },
        ),
      );
      socket.destroy();
    }, timeoutMs);
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.once('close', () => fail(new BlockrepError('QMP_UNAVAILABLE', `QEMU's monitor at ${socketPath} closed the connection before greeting`, { details: { socket: socketPath } })));
    socket.once('error', (err) => fail(new BlockrepError('QMP_UNAVAILABLE', `cannot talk to QEMU's monitor at ${socketPath}: ${err.message}`, { cause: err, details: { socket: socketPath } })));
  });
}
